"""``SimFleet``: enrol N simulated devices over REST, connect them, and drive their reports
from one ticker thread; all their MQTT traffic runs on one ``NetLoop`` (epoll) thread."""

from __future__ import annotations

import collections
import random
import ssl
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.x509.oid import NameOID

from device_agent.simulator.behaviour import Behaviour
from device_agent.simulator.device import SimDevice, behaviour_lookup
from device_agent.simulator.netloop import NetLoop

ENROL_WORKERS = 8  # concurrent enrolments over REST (the server's writes are fsync-bound)


class SimulatorError(Exception):
    """Enrolment or connection of the simulated fleet failed."""


class SimFleet:
    def __init__(self, *, server: str, admin_token: str, count: int, group: str = "sim",
                 prefix: str = "sim", behaviours: dict[str, Behaviour] | None = None,
                 report_interval_s: float = 1.0, inferences_per_report: int = 50,
                 seed: int = 0, ca_bundle: Path | None = None) -> None:
        """``ca_bundle``: the fleet CA an ``https://`` server is verified with (its
        ``DATA/ca/bundle.pem``); each device then enrols with a CSR and connects to an
        ``mqtts://`` broker with its own certificate, as an agent does."""
        if count < 1:
            raise SimulatorError("count must be >= 1")
        if server.startswith("https://") and ca_bundle is None:
            raise SimulatorError(f"{server} is https: give the fleet CA (ca_bundle)")
        self._verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(ca_bundle)) if ca_bundle else True)
        self._tls_dir: tempfile.TemporaryDirectory[str] | None = None
        self._tls_lock = threading.Lock()  # enrolment runs on ENROL_WORKERS threads
        self.server = server.rstrip("/")
        self._token = admin_token
        self.count, self.group, self.prefix = count, group, prefix
        self.behaviours: dict[str, Behaviour] = dict(behaviours or {})
        self.interval = report_interval_s
        self.inferences = inferences_per_report
        self.stats: collections.Counter[str] = collections.Counter()
        self._rng = random.Random(seed)  # noqa: S311 - simulated behaviour, not security
        self.devices: list[SimDevice] = []
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._net: NetLoop | None = None

    def behaviour(self, ref: str) -> Behaviour:
        return behaviour_lookup(self.behaviours)(ref)

    def start(self, connect_batch: int | None = None,
              batch_timeout_s: float = 120.0) -> SimFleet:
        """Enrol every device, connect it, and start reporting. With ``connect_batch``,
        devices connect that many at a time, each batch waiting until it is online (a
        thousand simultaneous CONNECTs is a thundering herd no real fleet produces)."""
        if self._net is not None:
            raise RuntimeError("SimFleet.start called twice")
        net = self._net = NetLoop(stats=self.stats).start()
        try:
            self._enrol_and_connect(net, connect_batch, batch_timeout_s)
        except BaseException:
            self.stop()
            raise
        self._ticker = threading.Thread(target=self._tick_loop, name="sim-ticker",
                                        daemon=True)
        self._ticker.start()
        return self

    def _enrol_and_connect(self, net: NetLoop, connect_batch: int | None,
                           batch_timeout_s: float) -> None:
        headers = {"Authorization": f"Bearer {self._token}"}
        seeds = [self._rng.random() for _ in range(self.count)]
        with httpx.Client(base_url=self.server + "/api/v1", headers=headers,
                          timeout=30, verify=self._verify) as http, \
                ThreadPoolExecutor(ENROL_WORKERS, thread_name_prefix="sim-enrol") as pool:
            self.devices.extend(pool.map(
                lambda i: self._enrol(http, net, i, seeds[i]), range(self.count)))
        step = connect_batch or len(self.devices)
        for first in range(0, len(self.devices), step):
            batch = self.devices[first:first + step]
            for device in batch:
                device.connect()
            if connect_batch:
                self._wait_online(batch, batch_timeout_s)

    def _enrol(self, http: httpx.Client, net: NetLoop, i: int, seed: float) -> SimDevice:
        device_id = f"{self.prefix}-{i:05d}"
        token = self._post(http, "/enrolment-tokens",
                           {"group": self.group, "ttl_s": 600})["token"]
        device_key = Ed25519PrivateKey.generate()  # kept: the device signs its reports
        pem = device_key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
               .sign(device_key, None).public_bytes(serialization.Encoding.PEM).decode())
        creds = self._post(http, "/enrol", {"token": token, "device_id": device_id,
                                            "public_key": pem, "csr": csr})
        fleet_key = serialization.load_pem_public_key(creds["fleet_public_key"].encode())
        if not isinstance(fleet_key, Ed25519PublicKey):
            raise SimulatorError("fleet key is not Ed25519")
        url = urlsplit(creds["mqtt"]["url"])
        return SimDevice(
            device_id=device_id, mqtt_host=url.hostname or "127.0.0.1",
            mqtt_port=url.port or 1883, password=creds["mqtt"]["password"],
            fleet_public_key=fleet_key, device_key=device_key, behaviour_for=self.behaviour,
            stats=self.stats,
            rng=random.Random(seed), net=net,  # noqa: S311 - simulated behaviour, not security
            tls_context=self._tls_context(device_id, device_key, creds)
            if url.scheme in ("mqtts", "ssl") else None)

    def _tls_context(self, device_id: str, device_key: Ed25519PrivateKey,
                     creds: dict[str, Any]) -> ssl.SSLContext:
        """The device's MQTT TLS context: its certificate and key (files in a directory of
        this fleet, removed at stop), verifying the broker against the fleet CA bundle."""
        if not isinstance(creds.get("certificate"), str) or not isinstance(
                creds.get("ca_bundle"), str):
            raise SimulatorError(f"{device_id}: the server issued no certificate")
        with self._tls_lock:
            if self._tls_dir is None:
                self._tls_dir = tempfile.TemporaryDirectory(prefix="sim-tls-")
            folder = Path(self._tls_dir.name)
        cert, key = folder / f"{device_id}.crt", folder / f"{device_id}.key"
        cert.write_text(creds["certificate"])
        key.touch(mode=0o600)
        key.write_bytes(device_key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        ctx = ssl.create_default_context(cadata=creds["ca_bundle"])
        ctx.load_cert_chain(str(cert), str(key))
        return ctx

    def _post(self, http: httpx.Client, path: str, body: dict[str, object]) -> dict[str, Any]:
        try:
            response = http.post(path, json=body)
        except httpx.HTTPError as e:
            raise SimulatorError(f"cannot reach {self.server}: {e}") from e
        if response.status_code >= 400:
            raise SimulatorError(f"{path} answered {response.status_code}: {response.text}")
        data: dict[str, str] = response.json()
        return data

    def wait_connected(self, timeout_s: float = 120.0) -> None:
        self._wait_online(self.devices, timeout_s)

    @staticmethod
    def _wait_online(devices: list[SimDevice], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while sum(d.online for d in devices) < len(devices):
            if time.monotonic() > deadline:
                online = sum(d.online for d in devices)
                raise SimulatorError(f"only {online}/{len(devices)} devices connected")
            time.sleep(0.05)

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.interval):
            for device in list(self.devices):
                self.stats["messages_sent"] += device.report(self.interval, self.inferences)

    def stop_reporting(self) -> None:
        """End the report ticker; devices stay connected (what they sent is delivered)."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(10)

    def set_offline(self, device_ids: list[str]) -> None:
        for d in self.devices:
            if d.device_id in device_ids:
                d.disconnect()

    def active_refs(self) -> collections.Counter[str | None]:
        return collections.Counter(
            None if d.active is None else f"{d.active.name}@{d.active.version}"
            for d in self.devices)

    def stop(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(10)
        for device in self.devices:
            device.stop()
        if self._net is not None:
            self._net.stop()
        if self._tls_dir is not None:
            self._tls_dir.cleanup()

    def __enter__(self) -> SimFleet:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
