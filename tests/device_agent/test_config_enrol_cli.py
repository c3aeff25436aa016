"""Enrolment writes a private config and key; a second install is refused; CLI status."""

from __future__ import annotations

import json
import stat
import tempfile
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.cli import main
from device_agent.config import AgentConfig
from device_agent.enrol import enrol
from device_agent.errors import ConfigError, EnrolError
from fleet_server.ca import FleetCA
from model_bundles import keys as mb_keys

FLEET_PEM = mb_keys.public_key_pem(Ed25519PrivateKey.generate())


CA = FleetCA.load_or_create(Path(tempfile.mkdtemp(prefix="enrol-ca-")))
PIN = CA.ca_hash()


def fleet_transport(seen: list[dict[str, object]], status: int = 201) -> httpx.MockTransport:
    """Stands in for the fleet server's CA and enrol endpoints (their contract, not their
    code); the certificate comes from a real FleetCA."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/ca":
            return httpx.Response(200, json={"ca_hash": PIN, "bundle": CA.trust_bundle_pem()})
        body = json.loads(request.content)
        seen.append(body)
        assert request.url.path == "/api/v1/enrol"
        if status != 201:
            return httpx.Response(status, json={"detail": "token expired"})
        return httpx.Response(201, json={
            "device_id": body["device_id"], "group": "lab",
            "mqtt": {"url": "mqtt://127.0.0.1:1883", "username": body["device_id"],
                     "password": "s3cret"},
            "fleet_public_key": FLEET_PEM, "fleet_key_id": "ab" * 32,
            "server_url": "http://fleet.local:8080",
            "certificate": CA.issue_device_cert(str(body["csr"]), str(body["device_id"])),
            "ca_bundle": CA.trust_bundle_pem()})

    return httpx.MockTransport(handler)


def test_enrol_writes_key_and_private_config_and_systemd_unit(tmp_path: Path) -> None:
    seen: list[dict[str, object]] = []
    cfg = enrol(server="http://fleet.local:8080", token=f"tok.{PIN}", device_id="dev-1",
                agent_dir=tmp_path, systemd=True, transport=fleet_transport(seen))
    assert cfg.mqtt_password == "s3cret" and cfg.group == "lab"
    assert stat.S_IMODE((tmp_path / "config.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys" / "device.key").stat().st_mode) == 0o600
    sent_key = mb_keys.load_public_key(str(seen[0]["public_key"]))
    assert mb_keys.key_id(sent_key) == mb_keys.key_id(
        mb_keys.load_private_key(tmp_path / "keys" / "device.key"))
    assert AgentConfig.load(tmp_path) == cfg
    unit = (tmp_path / "edgefleet-agent.service").read_text()
    assert f'-m device_agent run --dir "{tmp_path.resolve()}"' in unit
    assert "Restart=on-failure" in unit and "Type=notify" in unit


def test_install_into_an_enrolled_dir_is_refused_and_config_untouched(tmp_path: Path) -> None:
    enrol(server="http://f", token=f"t.{PIN}", device_id="dev-1", agent_dir=tmp_path,
          transport=fleet_transport([]))
    before = (tmp_path / "config.json").read_bytes()
    with pytest.raises(EnrolError, match="already enrolled"):
        enrol(server="http://f", token=f"t.{PIN}", device_id="dev-2", agent_dir=tmp_path,
              transport=fleet_transport([]))
    assert (tmp_path / "config.json").read_bytes() == before


def test_refused_enrolment_reports_the_server_detail_and_writes_no_config(
    tmp_path: Path,
) -> None:
    with pytest.raises(EnrolError, match=r"refused \(403\): token expired"):
        enrol(server="http://f", token=f"t.{PIN}", device_id="dev-1", agent_dir=tmp_path,
              transport=fleet_transport([], status=403))
    assert not (tmp_path / "config.json").exists()


def test_loading_an_unenrolled_dir_says_to_install(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not enrolled"):
        AgentConfig.load(tmp_path)


def test_cli_status_json_reads_local_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    enrol(server="http://f", token=f"t.{PIN}", device_id="dev-9", agent_dir=tmp_path,
          transport=fleet_transport([]))
    assert main(["status", "--dir", str(tmp_path), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["device_id"] == "dev-9"
    assert st["active"] is None
    assert st["journal"]["state"] == "idle"
    assert st["applied_seq"] == 0


def test_cli_status_on_unenrolled_dir_exits_1_with_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--dir", str(tmp_path)]) == 1
    assert "not enrolled" in capsys.readouterr().err


def test_cli_delegates_json_lists_every_delegate_with_reasons(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["delegates", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {r["name"]: r for r in rows}
    assert names["cpu"]["available"] is True
    assert all(r["available"] or r["reason"] for r in rows)
