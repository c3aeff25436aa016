"""Device identity against a real server (HTTPS, embedded broker over TLS with client
certificates): the pinned first contact, the certificate a CSR gets, renewal across a
server restart and a CA rollover, refused certificates, and revocation of a connected
device. The CLIs run as real processes where the test is about them."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from device_agent import identity
from device_agent.config import AgentConfig
from device_agent.enrol import enrol
from device_agent.errors import EnrolError
from fleet_server.ca import DEVICE_CERT_DAYS, FleetCA, device_uri, spki_hash
from fleet_server.cli import main as fleet_cli
from fleet_server.config import ServerSettings
from fleet_server.serve import RunningServer, start_server
from model_bundles import keys as mb_keys
from ota.topics import DeviceTopics


def settings(data: Path) -> ServerSettings:
    return ServerSettings(data_dir=data, port=0, mqtt_port=0)


@pytest.fixture()
def fleet(tmp_path: Path) -> Iterator[RunningServer]:
    with start_server(settings(tmp_path / "fleet")) as server:
        yield server


def admin(server: RunningServer) -> httpx.Client:
    return httpx.Client(base_url=server.http_url + "/api/v1", verify=verify(server),
                        headers={"Authorization": f"Bearer {server.admin_token}"}, timeout=30)


def verify(server: RunningServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_bundle))


def new_token(server: RunningServer) -> str:
    with admin(server) as api:
        r = api.post("/enrolment-tokens", json={"group": "lab"})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def device_ids(server: RunningServer) -> list[str]:
    with admin(server) as api:
        return [d["id"] for d in api.get("/devices").json()]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``fleet_server ...`` runs fleet-server's main, ``device_agent ...`` the agent's."""
    mains = {"fleet_server": "from fleet_server.cli import main",
             "device_agent": "from device_agent.cli import main"}
    code = f"import sys; {mains[args[0]]}; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args[1:]], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def files_of(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_install_refuses_a_server_whose_ca_is_not_the_pinned_one_and_writes_nothing(
        fleet: RunningServer, tmp_path: Path) -> None:
    token = new_token(fleet)
    secret, _, pin = token.rpartition(".")
    assert pin == fleet.services.ca.ca_hash()
    other_pin = FleetCA.load_or_create(tmp_path / "other-fleet").ca_hash()
    agent = tmp_path / "agent"
    r = cli("device_agent", "install", "--server", fleet.http_url, "--token",
            f"{secret}.{other_pin}", "--device-id", "dev-1", "--dir", str(agent))
    assert r.returncode == 1, r.stderr
    assert "does not match the token's CA hash" in r.stderr and "Traceback" not in r.stderr
    assert not agent.exists()
    with pytest.raises(EnrolError, match="carries no fleet CA hash"):
        enrol(server=fleet.http_url, token=secret, device_id="dev-1", agent_dir=agent)
    assert not agent.exists()
    assert device_ids(fleet) == []  # the token never reached the server: it still works
    enrol(server=fleet.http_url, token=token, device_id="dev-1", agent_dir=agent)
    assert device_ids(fleet) == ["dev-1"]


def test_enrolment_stores_a_7_day_certificate_naming_the_device_0600(
        fleet: RunningServer, tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    enrol(server=fleet.http_url, token=new_token(fleet), device_id="dev-1", agent_dir=agent)
    for path in (identity.cert_path(agent), identity.ca_bundle_path(agent),
                 agent / "keys" / "device.key"):
        assert path.stat().st_mode & 0o777 == 0o600, path
    cert = x509.load_pem_x509_certificate(identity.cert_path(agent).read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [device_uri("dev-1")]
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life == dt.timedelta(days=DEVICE_CERT_DAYS, minutes=5)  # 5 min backdated for skew
    key = mb_keys.load_private_key(agent / "keys" / "device.key")
    assert spki_hash(cert.public_key()) == spki_hash(key.public_key())
    assert fleet.services.ca.verify_device_cert(identity.cert_path(agent).read_bytes()
                                                ).issuer_hash == fleet.services.ca.ca_hash()


def test_renewal_works_across_a_server_restart_and_a_ca_rollover(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "fleet"
    early, late = tmp_path / "early", tmp_path / "late"
    with start_server(settings(data)) as server:
        old_hash = server.services.ca.ca_hash()
        enrol(server=server.http_url, token=new_token(server), device_id="early",
              agent_dir=early)
        enrol(server=server.http_url, token=new_token(server), device_id="late",
              agent_dir=late)
    first = identity.cert_path(early).read_bytes()
    with start_server(settings(data)) as server:  # restart: same CA from the data dir
        identity.renew(early, server=server.http_url, device_id="early")
        assert identity.cert_path(early).read_bytes() != first
        assert fleet_cli(["ca", "rotate", "--data", str(data), "--overlap-days", "14"]) == 0
        new_hash = capsys.readouterr().out.split()[0]
        assert new_hash != old_hash
        # the running server sees the rotation: a renewal now gets the new CA
        identity.renew(early, server=server.http_url, device_id="early")
    assert issuer_hash(early, data) == new_hash
    bundle = x509.load_pem_x509_certificates(identity.ca_bundle_path(early).read_bytes())
    assert [spki_hash(c.public_key()) for c in bundle] == [new_hash, old_hash]
    with start_server(settings(data)) as server:  # restart after the rollover
        # "late" still trusts only the old CA and holds an old-CA certificate: the server's
        # chain carries the new CA cross-signed by the old one, and the old CA is trusted
        assert [spki_hash(c.public_key()) for c in x509.load_pem_x509_certificates(
            identity.ca_bundle_path(late).read_bytes())] == [old_hash]
        identity.renew(late, server=server.http_url, device_id="late")
        identity.renew(early, server=server.http_url, device_id="early")
    assert issuer_hash(late, data) == issuer_hash(early, data) == new_hash


def issuer_hash(agent: Path, data: Path) -> str:
    return FleetCA.load_or_create(data).verify_device_cert(
        identity.cert_path(agent).read_bytes()).issuer_hash


def test_expired_foreign_and_misnamed_certificates_are_refused_and_nothing_changes(
        fleet: RunningServer, tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    enrol(server=fleet.http_url, token=new_token(fleet), device_id="dev-1", agent_dir=agent)
    key = mb_keys.load_private_key(agent / "keys" / "device.key")
    csr = identity.make_csr(key, "dev-1")
    ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    cases = {
        "expired": fleet.services.ca.issue_device_cert(csr, "dev-1", now=ago, days=1),
        "not issued by this fleet's CA": FleetCA.load_or_create(
            tmp_path / "other").issue_device_cert(csr, "dev-1"),
    }
    for message, cert in cases.items():
        identity.cert_path(agent).write_text(cert)
        before = files_of(agent)
        with pytest.raises(EnrolError, match=rf"renewal refused \(403\).*{message}"):
            identity.renew(agent, server=fleet.http_url, device_id="dev-1")
        assert files_of(agent) == before
    # a good certificate with a CSR naming another device, or a malformed CSR
    good = fleet.services.ca.issue_device_cert(csr, "dev-1")
    with httpx.Client(verify=verify(fleet)) as http:
        url = f"{fleet.http_url}/api/v1/devices/dev-1/certificate"
        r = http.post(url, json={"certificate": good,
                                 "csr": identity.make_csr(key, "dev-2")})
        assert r.status_code == 422 and "CSR names 'dev-2', not device 'dev-1'" in r.text
        r = http.post(url, json={"certificate": good, "csr": "not a csr"})
        assert r.status_code == 422 and "not a PEM certificate signing request" in r.text


def test_agent_renews_only_once_two_thirds_of_the_life_has_passed(
        fleet: RunningServer, tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    enrol(server=fleet.http_url, token=new_token(fleet), device_id="dev-1", agent_dir=agent)
    renewer = identity.Renewer(agent, server=fleet.http_url, device_id="dev-1")
    fresh = identity.cert_path(agent).read_bytes()
    assert renewer.check_once() is None  # not due: nothing asked, nothing changed
    assert identity.cert_path(agent).read_bytes() == fresh
    key = mb_keys.load_private_key(agent / "keys" / "device.key")
    five_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=5)
    identity.cert_path(agent).write_text(fleet.services.ca.issue_device_cert(
        identity.make_csr(key, "dev-1"), "dev-1", now=five_days_ago))
    assert identity.due(agent)
    new_end = renewer.check_once()
    assert new_end is not None and new_end > dt.datetime.now(dt.UTC) + dt.timedelta(days=6)
    assert not identity.due(agent)


class MqttDevice:
    """A device's MQTT connection with its certificate (TLS) from its agent directory."""

    def __init__(self, server: RunningServer, agent: Path) -> None:
        cfg = AgentConfig.load(agent)
        url = urlsplit(server.mqtt_url)
        self.connected, self.disconnected = threading.Event(), threading.Event()
        self.answered = threading.Event()  # a CONNACK (either way) or the connection closed
        self.reason: object = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.device_id,
                                  protocol=mqtt.MQTTv311)
        self.client.username_pw_set(cfg.mqtt_username, cfg.mqtt_password)
        if url.scheme == "mqtts":
            self.client.tls_set(ca_certs=str(identity.ca_bundle_path(agent)),
                                certfile=str(identity.cert_path(agent)),
                                keyfile=str(agent / "keys" / "device.key"),
                                cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.connect_async(str(url.hostname), int(url.port or 0))
        self.client.loop_start()

    def _on_connect(self, client: object, userdata: object, flags: object, reason: object,
                    props: object) -> None:
        self.reason = reason
        if not getattr(reason, "is_failure", False):
            self.connected.set()
        self.answered.set()

    def _on_disconnect(self, *args: object) -> None:
        self.disconnected.set()
        self.answered.set()

    def close(self) -> None:
        self.client.disconnect()  # first: the network thread then ends without a retry wait
        self.client.loop_stop()


def test_revoke_cuts_off_a_connected_device_and_its_reports_and_key_stop_counting(
        fleet: RunningServer, tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    enrol(server=fleet.http_url, token=new_token(fleet), device_id="dev-1", agent_dir=agent)
    cfg = AgentConfig.load(agent)
    download = f"{fleet.http_url}/api/v1/bundles/nosuch@1.0.0/download"
    device_login = (cfg.device_id, cfg.mqtt_password)  # its HTTP credentials
    assert httpx.get(download, auth=device_login, verify=verify(fleet)).status_code == 404
    device = MqttDevice(fleet, agent)
    try:
        assert device.connected.wait(20), device.reason
        r = cli("fleet_server", "devices", "revoke", "dev-1", "--server", fleet.http_url,
                "--token", fleet.admin_token, "--cacert", str(fleet.ca_bundle))
        assert r.returncode == 0, r.stderr
        assert "dev-1 revoked" in r.stdout and "disconnected from the broker" in r.stdout
        assert device.disconnected.wait(20)  # closed by the broker, not by the device
    finally:
        device.close()
    # reconnecting with the same certificate is refused
    again = MqttDevice(fleet, agent)
    try:
        assert again.answered.wait(20)
        assert not again.connected.is_set()
    finally:
        again.close()
    # a report that reaches ingest after the revocation (queued before it) does not count
    bridge = fleet.services.bridge
    assert bridge is not None
    before = bridge.stats["dropped_revoked"]
    topic = DeviceTopics("dev-1").telemetry
    assert bridge.handle(topic, b"{}") is None
    assert bridge.stats["dropped_revoked"] == before + 1
    metric = fleet.services.metrics.revoked_dropped.labels("telemetry")._value.get()
    assert metric >= 1
    # the API refuses its credentials and its certificate
    r = httpx.get(download, auth=device_login, verify=verify(fleet))
    assert r.status_code == 401 and "dev-1 is revoked" in r.text
    with pytest.raises(EnrolError, match="dev-1 is revoked"):
        identity.renew(agent, server=fleet.http_url, device_id="dev-1")
    # its key cannot enrol again, under any id
    second = tmp_path / "again"
    (second / "keys").mkdir(parents=True)
    shutil.copy2(agent / "keys" / "device.key", second / "keys" / "device.key")
    with pytest.raises(EnrolError, match="device key was revoked"):
        enrol(server=fleet.http_url, token=new_token(fleet), device_id="dev-1b",
              agent_dir=second)
    assert device_ids(fleet) == ["dev-1"]
    assert not (second / "config.json").exists()
    with admin(fleet) as api:
        rows = api.get("/audit", params={"action": "device.revoke"}).json()
        assert [(a["subject"], a["actor"]) for a in rows] == [("dev-1", "bootstrap-admin")]
        assert api.get("/devices/dev-1").json()["revoked"]["revoked_by"] == "bootstrap-admin"
        # revoking again changes nothing
        r = api.post("/devices/dev-1/revoke")
        assert r.status_code == 200 and r.json()["already_revoked"] is True
        assert len(api.get("/audit", params={"action": "device.revoke"}).json()) == 1
