"""A real fleet server on either broker for revocation tests and ``bench/revocation.py``.

``embedded``: the server's own broker (TLS, client certificates). ``mosquitto``: a real
Mosquitto run (and owned, for its SIGHUP) from what ``fleet-server mosquitto-config``
writes, dynamic-security plugin included, and the server connected to it with
``--broker mqtts://...``. Devices get certificates from the fleet CA and a registry row, as
enrolment gives them; ``DeviceConnection`` is a bare MQTT client holding one.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleet_server.ca import FleetCA
from fleet_server.cli import main as fleet_server_main
from fleet_server.config import ServerSettings
from fleet_server.mosquitto_config import MosquittoFiles
from fleet_server.serve import RunningServer, start_server
from model_bundles import keys as mb_keys
from tests.faults.mqtt_tools import free_port, mosquitto_binary
from tests.security.tls_certs import ClientCert, issue


def wait_until(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@dataclass
class Mosquitto:
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
def run_mosquitto(data: Path, out: Path) -> Iterator[Mosquitto]:
    port = free_port()
    assert fleet_server_main(["mosquitto-config", "--data", str(data), "--out", str(out),
                              "--port", str(port), "--host", "127.0.0.1"]) == 0
    files = MosquittoFiles(out)
    if os.geteuid() == 0:  # as root Mosquitto drops to user "mosquitto", who cannot read tmp
        files.conf.write_text(files.conf.read_text() + "user root\n")
    log_path = out / "mosquitto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([mosquitto_binary(), "-c", str(files.conf), "-v"], stdout=log,
                                stderr=subprocess.STDOUT)
    broker = Mosquitto(proc, port, log_path)
    try:
        wait_until(lambda: "running" in broker.text() or proc.poll() is not None,
                   "mosquitto to listen")
        assert proc.poll() is None, broker.text()
        yield broker
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class Fleet:
    kind: str
    server: RunningServer
    ca: FleetCA
    certs: Path
    mosquitto: Mosquitto | None

    @property
    def port(self) -> int:
        port = self.server.services.mqtt_port
        assert port is not None
        return port

    def enrol(self, device_id: str) -> ClientCert:
        cert = issue(self.ca, self.certs, device_id)
        self.server.services.registry.add_device(
            device_id=device_id, group="default", mqtt_secret_hash="-",
            public_key=mb_keys.public_key_pem(cert.private_key.public_key()))
        return cert

    def connect(self, device_id: str, cert: ClientCert) -> DeviceConnection:
        return DeviceConnection(self.server.services.mqtt_host, self.port, device_id, cert,
                                self.ca.trust_bundle_path())

    def revoke(self, device_id: str) -> dict[str, Any]:
        r = httpx.post(f"{self.server.http_url}/api/v1/devices/{device_id}/revoke",
                       headers={"Authorization": f"Bearer {self.server.admin_token}"},
                       verify=ssl.create_default_context(cafile=str(self.server.ca_bundle)),
                       timeout=30)
        assert r.status_code == 200, r.text
        return dict(r.json())


@contextmanager
def run_fleet(kind: str, tmp: Path) -> Iterator[Fleet]:
    data = tmp / "fleet"
    if kind == "embedded":
        with start_server(ServerSettings(data_dir=data, port=0, mqtt_port=0)) as server:
            yield Fleet(kind, server, FleetCA.load_or_create(data), tmp / "certs", None)
        return
    with run_mosquitto(data, tmp / "mosquitto") as broker, start_server(ServerSettings(
            data_dir=data, port=0, mqtt_port=0,
            broker_url=f"mqtts://127.0.0.1:{broker.port}")) as server:
        yield Fleet(kind, server, FleetCA.load_or_create(data), tmp / "certs", broker)


class DeviceConnection:
    """One MQTT 3.1.1 connection with a device certificate; no automatic reconnect.
    ``outcome`` is "accepted" or how the broker refused; ``closed`` is set (with
    ``closed_at``, monotonic) when the broker closes an accepted connection."""

    def __init__(self, host: str, port: int, device_id: str, cert: ClientCert,
                 ca_bundle: Path) -> None:
        self.accepted, self.ended, self.closed = (threading.Event(), threading.Event(),
                                                  threading.Event())
        self.closed_at: float | None = None
        self.failure: str | None = None
        self.suback: list[Any] = []
        self.puback = threading.Event()
        self._suback = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, clean_session=True,
                        protocol=mqtt.MQTTv311, reconnect_on_failure=False)
        c.tls_set(ca_certs=str(ca_bundle), certfile=str(cert.cert), keyfile=str(cert.key),
                  cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_publish = lambda *a: self.puback.set()
        self.client = c
        try:
            c.connect(host, port, keepalive=30)
        except (OSError, ssl.SSLError) as e:  # handshake refused outright
            self.failure = f"handshake: {e}"
            self.ended.set()
            return
        c.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self.failure = f"CONNACK {reason}"
            self.ended.set()
        else:
            self.accepted.set()

    def _on_disconnect(self, *args: Any) -> None:
        if self.accepted.is_set() and not self.closed.is_set():
            self.closed_at = time.monotonic()
            self.closed.set()
        self.failure = self.failure or "connection closed by the broker"
        self.ended.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        self.suback = list(reasons)
        self._suback.set()

    def outcome(self, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.accepted.is_set():
                return "accepted"
            if self.ended.is_set():
                return self.failure or "connection closed by the broker"
            time.sleep(0.005)
        raise AssertionError("no answer from the broker")

    def subscribe(self, topic: str) -> list[Any]:
        self._suback.clear()
        self.client.subscribe(topic, qos=1)
        assert self._suback.wait(10), "no SUBACK"
        return self.suback

    def publish(self, topic: str, payload: bytes) -> None:
        self.puback.clear()
        self.client.publish(topic, payload, qos=1)
        assert self.puback.wait(10), "no PUBACK"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
