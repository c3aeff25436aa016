"""A real fleet server on either broker for revocation tests and ``bench/revocation.py``.

``embedded``: the server's own broker (TLS, client certificates). ``mosquitto``: a real
Mosquitto run (and owned, for its SIGHUP) from what ``fleet-server mosquitto-config``
writes, dynamic-security plugin included, and the server connected to it with
``--broker mqtts://...``. Devices get certificates from the fleet CA and a registry row, as
enrolment gives them; ``DeviceConnection`` is a bare MQTT client holding one.
"""

from __future__ import annotations

import ssl
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
from fleet_server.config import ServerSettings
from fleet_server.serve import RunningServer, start_server
from model_bundles import keys as mb_keys
from tests.security.tls_certs import ClientCert, issue
from tests.security.tls_fleet import Mosquitto
from tests.security.tls_fleet import mosquitto_from_config as run_mosquitto


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
