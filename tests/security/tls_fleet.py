"""A real fleet with TLS on every link, on either broker, for the transport tests.

The server starts with its defaults (HTTPS, MQTT over TLS with client certificates from the
fleet CA in its data directory). On ``mosquitto`` the broker is a real Mosquitto run from
what ``fleet-server mosquitto-config --out DIR`` writes, and the server connects to it
with ``--broker mqtts://...``. Devices ``dev-a``, ``dev-b``, ``dev-c`` are in the registry,
each with a certificate from the fleet CA, connected through the agent's own ``MqttLink``.
"""

from __future__ import annotations

import os
import queue
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from device_agent.mqtt_link import LinkTls, MqttLink
from device_agent.outbox import Outbox
from fleet_server.ca import FleetCA
from fleet_server.cli import main as fleet_server_main
from fleet_server.config import ServerSettings
from fleet_server.mosquitto_config import MosquittoFiles
from fleet_server.serve import RunningServer, start_server
from model_bundles import keys as mb_keys
from ota.messages import DeviceState
from ota.signed_report import sign_report
from ota.topics import DeviceTopics

from .broker_fleet import MOSQUITTO, free_port, wait_until
from .tls_certs import ClientCert, issue

DEVICES = ("dev-a", "dev-b", "dev-c")


def signed(cert: ClientCert, report: bytes) -> bytes:
    """``report`` signed with the device key its certificate is for."""
    return sign_report(report, cert.private_key)


def online_state(device_id: str, agent_version: str, *, applied_seq: int = 0) -> bytes:
    """An online DeviceState, newer (its report seq) than any made before in this process."""
    seq = time.time_ns() // 1000  # microseconds: increasing
    return DeviceState(device_id=device_id, status="online", ts=time.time(),
                       agent_version=agent_version, applied_seq=applied_seq,
                       seq=seq).to_bytes()


@dataclass
class TlsDevice:
    device_id: str
    cert: ClientCert
    link: MqttLink
    received: queue.Queue[tuple[str, bytes]] = field(default_factory=queue.Queue)


@dataclass
class TlsFleet:
    kind: str
    server: RunningServer
    ca: FleetCA
    host: str
    port: int
    certs_dir: Path
    devices: dict[str, TlsDevice]
    broker_log: Path | None

    @property
    def ca_bundle(self) -> Path:
        return self.ca.trust_bundle_path()

    @property
    def registry(self) -> Any:
        return self.server.services.registry

    def device_row(self, device_id: str) -> dict[str, Any]:
        row = self.registry.get_device(device_id=device_id)
        return {k: row[k] for k in ("online", "state", "active_bundle", "delegate", "last_seen")}

    def raw(self, client_id: str, cert: ClientCert | None, *,
            ca_bundle: Path | None = None) -> RawTlsClient:
        return RawTlsClient(self.host, self.port, client_id, cert, ca_bundle or self.ca_bundle)


class RawTlsClient:
    """A bare paho client over TLS (an attacker's): records whether it got a CONNACK that
    accepted it, or how the broker ended the attempt."""

    def __init__(self, host: str, port: int, client_id: str, cert: ClientCert | None,
                 ca_bundle: Path) -> None:
        self.accepted = threading.Event()
        self.ended = threading.Event()
        self.failure: str | None = None
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=True, protocol=mqtt.MQTTv311)
        self.client.tls_set(ca_certs=str(ca_bundle),
                            certfile=str(cert.cert) if cert else None,
                            keyfile=str(cert.key) if cert else None,
                            cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.ended.set()
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.client.reconnect_delay_set(60, 60)
        try:
            self.client.connect(host, port, keepalive=30)
        except (OSError, ssl.SSLError) as e:  # handshake refused outright (TLS 1.2 style)
            self.failure = f"handshake: {e}"
            self.ended.set()
        self._looping = False

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self.failure = f"CONNACK {reason}"
            self.ended.set()
        else:
            self.accepted.set()

    def outcome(self, timeout: float = 10.0) -> str:
        """"accepted", or why not (the broker's refusal or the closed connection)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.accepted.is_set():
                self.client.loop_start()  # for what the test does next on the connection
                self._looping = True
                return "accepted"
            if self.ended.is_set():
                return self.failure or "connection closed by the broker"
            if self.client.loop(0.05) != mqtt.MQTT_ERR_SUCCESS and not self.accepted.is_set():
                return self.failure or "connection closed by the broker"
        raise AssertionError("no answer from the broker")

    def subscribe(self, topic: str, *, may_be_dropped: bool = False) -> bool:
        """Subscribe and wait for the SUBACK; with ``may_be_dropped``, False if the broker
        closed the connection first (another connection took over its client id)."""
        self._subscribed.clear()
        self.client.subscribe(topic, qos=1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._subscribed.wait(0.05):
                return True
            if may_be_dropped and self.ended.is_set():
                return False
        raise AssertionError("no SUBACK")

    def close(self) -> None:
        self.client.disconnect()
        if self._looping:
            self.client.loop_stop()


def _link(device_id: str, cert: ClientCert, ca_bundle: Path, host: str, port: int,
          outbox: Path, received: queue.Queue[tuple[str, bytes]]) -> MqttLink:
    topics = DeviceTopics(device_id)
    link = MqttLink(device_id=device_id, host=host, port=port, username=device_id,
                    password="", will_topic=topics.state,  # noqa: S106 - certificates, no password
                    will_payload=DeviceState.offline(device_id).to_bytes(),
                    subscriptions=topics.device_subscriptions, outbox=Outbox(outbox),
                    on_message=lambda t, p: received.put((t, p)),
                    tls=LinkTls(ca_bundle, cert.cert, cert.key),
                    on_connected=lambda: link.publish_retained(
                        topics.state, signed(cert, online_state(device_id, "0.1.0"))))
    return link


@dataclass
class Mosquitto:
    """A running Mosquitto: its process (owned, for SIGHUP), port and log."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def reload(self) -> None:
        """What an operator's ``systemctl reload mosquitto`` does: SIGHUP, then wait for it."""
        before = self.text().count("Reloading config")
        self.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: self.text().count("Reloading config") > before, "mosquitto reload")


@contextmanager
def mosquitto_from_config(data: Path, out: Path,
                          replicas: tuple[str, ...] = (), *,
                          verbose: bool = True) -> Iterator[Mosquitto]:
    """A real Mosquitto from ``fleet-server mosquitto-config --data DATA --out OUT``
    (``--replica NAME`` for each of ``replicas``); ``verbose`` logs every packet (``-v``)."""
    port = free_port()
    args = ["mosquitto-config", "--data", str(data), "--out", str(out), "--port", str(port),
            "--host", "127.0.0.1"]
    for name in replicas:
        args += ["--replica", name]
    assert fleet_server_main(args) == 0
    files = MosquittoFiles(out)
    if os.geteuid() == 0:  # as root Mosquitto drops to user "mosquitto", who cannot read tmp
        files.conf.write_text(files.conf.read_text() + "user root\n")
    log_path = out / "mosquitto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(files.conf), *(["-v"] if verbose else [])],
                                stdout=log, stderr=subprocess.STDOUT)
    broker = Mosquitto(proc, port, log_path)
    try:
        wait_until(lambda: "running" in broker.text() or proc.poll() is not None,
                   "mosquitto to listen", timeout=20)
        assert proc.poll() is None, broker.text()
        yield broker
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def run_mosquitto(data: Path, out: Path) -> Iterator[tuple[int, Path]]:
    """``mosquitto_from_config`` as (port, log path)."""
    with mosquitto_from_config(data, out) as broker:
        yield broker.port, broker.log


@contextmanager
def run_tls_fleet(kind: str, tmp: Path) -> Iterator[TlsFleet]:
    data = tmp / "fleet"
    with _broker(kind, data, tmp / "mosquitto") as (settings, log_path), \
            start_server(settings) as server:
        assert server.services.tls is not None, "the server did not start with TLS"
        host, port = server.services.mqtt_host, server.services.mqtt_port
        assert port is not None
        ca = FleetCA.load_or_create(data)
        devices: dict[str, TlsDevice] = {}
        for device_id in DEVICES:
            cert = issue(ca, tmp / "certs", device_id)
            server.services.registry.add_device(
                device_id=device_id, group="default", mqtt_secret_hash="-",
                public_key=mb_keys.public_key_pem(cert.private_key.public_key()))
            received: queue.Queue[tuple[str, bytes]] = queue.Queue()
            link = _link(device_id, cert, ca.trust_bundle_path(), host, port,
                         tmp / "outbox" / device_id, received)
            devices[device_id] = TlsDevice(device_id, cert, link, received)
        fleet = TlsFleet(kind, server, ca, host, port, tmp / "certs", devices, log_path)
        try:
            for dev in devices.values():
                dev.link.start()
            for d in DEVICES:
                wait_until(lambda d=d: fleet.registry.get_device(device_id=d)["online"],
                           f"{d} online", timeout=20)
            yield fleet
        finally:
            for dev in devices.values():
                dev.link.stop()


@contextmanager
def _broker(kind: str, data: Path, out: Path) -> Iterator[tuple[ServerSettings, Path | None]]:
    if kind == "embedded":
        yield ServerSettings(data_dir=data, port=0, mqtt_port=0), None
        return
    with run_mosquitto(data, out) as (port, log_path):
        yield ServerSettings(data_dir=data, port=0, mqtt_port=0,
                             broker_url=f"mqtts://127.0.0.1:{port}"), log_path
