"""TLS by default, plain only with ``--insecure`` and loudly (docs/security.md, "Transport")."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from device_agent.http_fetch import HttpFetchError, fetch_missing
from device_agent.simulator.fleet import SimFleet, SimulatorError
from fleet_server.api_client import FleetApiError, FleetClient
from fleet_server.app import create_app
from fleet_server.ca import FleetCA
from fleet_server.cli import main as fleet_server_main
from fleet_server.config import ServerSettings, SettingsError
from fleet_server.serve import RunningServer, start_server
from fleet_server.tls import INSECURE_BANNER
from tests.security.broker_fleet import wait_until

PAGES = ("/console/login", "/console/", "/console/devices", "/console/admin")


def _pages(settings: ServerSettings) -> dict[str, str]:
    app = create_app(settings)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {app.state.services.data_dir.admin_token}"
        return {p: client.get(p, follow_redirects=True).text for p in PAGES}


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with start_server(ServerSettings(data_dir=tmp_path_factory.mktemp("tls") / "fleet",
                                     port=0, mqtt_port=0)) as server:
        yield server


def test_insecure_server_warns_at_start_and_every_console_page_shows_the_red_banner(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fleet_server.services"):
        pages = _pages(ServerSettings(data_dir=tmp_path / "fleet", port=0, mqtt_port=0,
                                      insecure=True))
    assert any(INSECURE_BANNER in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    for path, html in pages.items():
        assert 'id="insecure-banner"' in html and INSECURE_BANNER in html, path
    assert not (tmp_path / "fleet" / "ca" / "server.crt").exists()  # no TLS listener


def test_tls_server_has_no_banner_and_speaks_https_and_mqtts(
        tls_server: RunningServer, tmp_path: Path) -> None:
    assert tls_server.http_url.startswith("https://")
    assert tls_server.mqtt_url.startswith("mqtts://")
    assert tls_server.ca_bundle is not None and tls_server.ca_bundle.is_file()
    pages = _pages(ServerSettings(data_dir=tmp_path / "other", port=0, mqtt_port=0))
    for path, html in pages.items():
        assert "insecure-banner" not in html, path


def test_client_with_the_fleet_ca_reaches_the_api_and_one_without_gets_a_clear_refusal(
        tls_server: RunningServer, tmp_path: Path) -> None:
    with FleetClient(tls_server.http_url, tls_server.admin_token,
                     ca_bundle=tls_server.ca_bundle) as client:
        assert client.health()["status"] == "ok"
    with FleetClient(tls_server.http_url, tls_server.admin_token) as client, \
            pytest.raises(FleetApiError, match="certificate is not trusted.*--cacert"):
        client.health()


def test_broker_url_scheme_must_match_the_transport() -> None:
    with pytest.raises(SettingsError, match="mqtt:// only with --insecure"):
        ServerSettings(data_dir=Path("unused"), broker_url="mqtt://127.0.0.1:1883")
    with pytest.raises(SettingsError, match="use mqtts://"):
        ServerSettings(data_dir=Path("unused"), broker_url="mqtts://127.0.0.1:8883",
                       insecure=True)
    assert ServerSettings(data_dir=Path("unused"),
                          broker_url="mqtts://broker:8883").external_broker.port == 8883


def test_mosquitto_config_writes_a_tls_listener_with_identity_usernames_and_percent_u_acl(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mosquitto"
    assert fleet_server_main(["mosquitto-config", "--data", str(tmp_path / "fleet"),
                              "--out", str(out), "--port", "8883",
                              "--hostname", "broker.example"]) == 0
    conf = (out / "mosquitto.conf").read_text().splitlines()
    for line in ("listener 8883 0.0.0.0", "allow_anonymous false", "require_certificate true",
                 "use_identity_as_username true", "use_username_as_clientid true",
                 f"cafile {out / 'ca.pem'}", f"certfile {out / 'server.crt'}",
                 f"keyfile {out / 'server.key'}",
                 f"crlfile {(tmp_path / 'fleet' / 'ca' / 'crl.pem').resolve()}"):
        assert line in conf
    assert not any(line.startswith("password_file") for line in conf)
    acl = (out / "edgefleet.acl").read_text()
    assert "pattern write edgefleet/v1/devices/%u/state" in acl
    assert "pattern read edgefleet/v1/devices/%u/desired" in acl
    assert (out / "ca.pem").read_text() == (tmp_path / "fleet" / "ca" / "bundle.pem").read_text()
    assert (out / "server.key").stat().st_mode & 0o777 == 0o600
    assert "mosquitto -c" in capsys.readouterr().out


class _OneChunk:
    """The part of ``ChunkAssembler`` ``fetch_missing`` reads: one missing 16-byte chunk."""

    chunk_size = 16

    def missing(self) -> list[int]:
        return [0]

    def chunk_length(self, index: int) -> int:
        return 16

    def accept(self, index: int, data: bytes) -> None:
        raise AssertionError("nothing may be accepted from an untrusted server")


def test_agent_download_refuses_a_server_whose_certificate_is_not_from_the_pinned_ca(
        tls_server: RunningServer, tmp_path: Path) -> None:
    other = FleetCA.load_or_create(tmp_path / "other-fleet")
    pinned = ssl.create_default_context(cafile=str(other.trust_bundle_path()))
    with pytest.raises(HttpFetchError, match="does not chain to the pinned fleet CA"):
        fetch_missing(_OneChunk(), f"{tls_server.http_url}/api/v1/bundles/x/download",  # type: ignore[arg-type]
                      device_id="dev-1", secret="s", verify=pinned)


def test_simulated_devices_enrol_with_csrs_and_connect_over_tls_with_their_certificates(
        tls_server: RunningServer) -> None:
    with SimFleet(server=tls_server.http_url, admin_token=tls_server.admin_token, count=3,
                  prefix="tls-sim", ca_bundle=tls_server.ca_bundle) as fleet:
        fleet.wait_connected(60)
        registry = tls_server.services.registry
        wait_until(lambda: all(registry.get_device(device_id=d.device_id)["online"]
                               for d in fleet.devices), "the server sees them online")
    with pytest.raises(SimulatorError, match="give the fleet CA"):
        SimFleet(server=tls_server.http_url, admin_token=tls_server.admin_token, count=1)
