"""First start creates secrets and keys with private modes; later starts reuse them."""

from __future__ import annotations

import stat
from pathlib import Path

from fastapi.testclient import TestClient

from fleet_server.app import create_app
from fleet_server.config import ServerSettings
from fleet_server.datadir import open_data_dir
from model_bundles import keys


def test_first_start_creates_private_secrets_and_second_start_reuses_them(
        tmp_path: Path) -> None:
    first = open_data_dir(tmp_path / "fleet")
    assert first.first_start
    for name in ("admin.token", "fleet.key", "mqtt.secret"):
        assert stat.S_IMODE((tmp_path / "fleet" / name).stat().st_mode) == 0o600
    pub = keys.load_public_key(tmp_path / "fleet" / "fleet.pub")
    assert keys.key_id(pub) == first.fleet_key_id
    second = open_data_dir(tmp_path / "fleet")
    assert not second.first_start
    assert (second.admin_token, second.fleet_key_id, second.mqtt_secret) == (
        first.admin_token, first.fleet_key_id, first.mqtt_secret)


def test_upload_over_the_size_cap_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    settings = ServerSettings(data_dir=tmp_path / "fleet", port=0, mqtt_port=0,
                              max_upload_bytes=1000)
    app = create_app(settings)
    with TestClient(app) as api:
        api.headers["Authorization"] = f"Bearer {app.state.services.data_dir.admin_token}"
        r = api.post("/api/v1/bundles", content=b"x" * 5000)
        assert r.status_code == 413
        assert list((tmp_path / "fleet" / "bundles").iterdir()) == []
        assert api.get("/api/v1/bundles").json() == []
