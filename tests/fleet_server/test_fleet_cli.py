"""The fleet-server CLI against a running server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_server.api_client import FleetClient
from fleet_server.bundle_cli import main as bundle_main
from fleet_server.cli import format_table, main
from fleet_server.serve import RunningServer
from model_bundles import keys

from .bundle_helpers import make_bundle


def test_admin_command_without_server_is_a_clear_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("EDGEFLEET_SERVER", raising=False)
    monkeypatch.delenv("EDGEFLEET_TOKEN", raising=False)
    assert main(["devices"]) == 2
    assert "EDGEFLEET_SERVER" in capsys.readouterr().err


def test_publish_and_deploy_through_the_clis(
        server: RunningServer, tmp_path: Path, sample_onnx: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EDGEFLEET_SERVER", server.http_url)
    monkeypatch.setenv("EDGEFLEET_TOKEN", server.admin_token)
    ports = json.loads((server.data_dir / "ports.json").read_text())
    assert ports["http_url"] == server.http_url and ports["mqtt_url"] == server.mqtt_url
    key = Ed25519PrivateKey.generate()
    pub = tmp_path / "publisher.pub"
    pub.write_text(keys.public_key_pem(key))
    assert main(["publishers", "add", str(pub), "--name", "ml"]) == 0
    bundle = make_bundle(tmp_path / "s.efb", sample_onnx, key)
    capsys.readouterr()
    assert bundle_main(["publish", str(bundle)]) == 0
    assert capsys.readouterr().out.split()[1] == "sample@1.0.0"
    assert main(["enrol-token", "--group", "lab"]) == 0
    token = capsys.readouterr().out.strip()


    with FleetClient(server.http_url) as anon:
        anon.enrol(token, "dev-1", keys.public_key_pem(Ed25519PrivateKey.generate()))
    assert main(["deploy", "sample@1.0.0", "--group", "lab"]) == 0
    assert "dev-1=issued" in capsys.readouterr().out
    assert main(["deployments", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["targets"][0]["device_id"] == "dev-1"
    assert main(["deploy", "nope@1.0.0", "--device", "dev-1"]) == 1
    assert "404" in capsys.readouterr().err


def test_tables_are_aligned() -> None:
    text = format_table([{"a": "x", "b": None}, {"a": "long", "b": 2}], [("A", "a"), ("B", "b")])
    assert text.splitlines() == ["A     B", "x     -", "long  2"]
