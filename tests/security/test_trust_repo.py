"""The server's TUF repository as operators and devices see it: `fleet-server trust`
commands, the public `/api/v1/trust/` routes and the root handed out at enrolment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tuf.api.metadata import Metadata

from device_agent.trust_store import TrustStore
from fleet_server.app import create_app
from fleet_server.cli import main
from fleet_server.config import ServerSettings
from model_bundles import keys


def test_trust_init_writes_offline_root_keys_and_refuses_a_second_init(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, offline = tmp_path / "data", tmp_path / "usb"
    assert main(["trust", "init", "--data", str(data), "--root-keys", str(offline),
                 "--threshold", "2", "--count", "3"]) == 0
    assert len(list(offline.glob("root-*.key"))) == 3
    assert sorted(p.name for p in (data / "trust" / "keys").iterdir()) == [
        "snapshot.key", "targets.key", "timestamp.key"]  # no root key on the server
    root = Metadata.from_bytes((data / "trust" / "metadata" / "root.json").read_bytes())
    assert root.signed.roles["root"].threshold == 2 and len(root.signatures) == 3
    assert main(["trust", "init", "--data", str(data), "--root-keys", str(offline)]) == 1
    assert "already holds a TUF repository" in capsys.readouterr().err


def test_trust_rotate_root_needs_the_old_threshold(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    data, offline = tmp_path / "data", tmp_path / "usb"
    main(["trust", "init", "--data", str(data), "--root-keys", str(offline),
          "--threshold", "2", "--count", "2"])
    one = tmp_path / "one"
    one.mkdir()
    first = sorted(offline.glob("*.key"))[0]
    (one / first.name).write_bytes(first.read_bytes())
    assert main(["trust", "rotate-root", "--data", str(data), "--root-keys", str(one),
                 "--new-root-keys", str(tmp_path / "new")]) == 1
    assert "needs 2" in capsys.readouterr().err
    assert main(["trust", "rotate-root", "--data", str(data), "--root-keys", str(offline),
                 "--new-root-keys", str(tmp_path / "new")]) == 0
    assert (data / "trust" / "metadata" / "2.root.json").exists()
    assert main(["trust", "show", "--data", str(data)]) == 0
    assert "root v2" in capsys.readouterr().out


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(ServerSettings(data_dir=tmp_path / "srv", port=0, mqtt_port=0))) as client:
        yield client


def test_enrolment_hands_out_the_root_and_trust_routes_serve_metadata(
        api: TestClient, tmp_path: Path) -> None:
    token = api.app.state.services.data_dir.admin_token  # type: ignore[attr-defined]
    auth = {"Authorization": f"Bearer {token}"}
    enrol_token = api.post("/api/v1/enrolment-tokens", json={"group": "g"}, headers=auth)
    key = keys.generate_private_key_file(tmp_path / "dev.key")
    resp = api.post("/api/v1/enrol", json={"token": enrol_token.json()["token"],
                                            "device_id": "dev-1",
                                            "public_key": keys.public_key_pem(key)})
    assert resp.status_code == 201
    store = TrustStore(tmp_path / "agent")
    store.install_initial_root(resp.json()["trust_root"])
    assert store.has_root
    assert api.get("/api/v1/trust/1.root.json").content == resp.json()["trust_root"].encode()
    assert api.get("/api/v1/trust/2.root.json").status_code == 404
    ts = api.get("/api/v1/trust/timestamp.json")  # public: no admin token
    assert ts.status_code == 200 and Metadata.from_bytes(ts.content).signed.type == "timestamp"
    assert api.get("/api/v1/trust/..%2Fkeys%2Ftargets.key").status_code == 404
