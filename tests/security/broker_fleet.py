"""A real fleet on a real broker for the broker attack tests.

A fleet server (real SQLite registry, real MQTT bridge) on either the embedded amqtt broker
or a real Mosquitto configured by ``fleet_server.mosquitto_config`` (per-device passwords,
per-device ACL), and two enrolled devices, ``dev-a`` and ``dev-b``, each connected with the
device agent's own ``MqttLink`` (persistent session, retained offline will, subscriptions
to its own ``desired`` and ``chunks``). The server has sent ``dev-b`` a signed instruction.
"""

from __future__ import annotations

import os
import queue
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device_agent.mqtt_link import MqttLink
from device_agent.outbox import Outbox
from fleet_server.broker_auth import SERVER_USERNAME
from fleet_server.config import ServerSettings
from fleet_server.mosquitto_config import MosquittoFiles
from fleet_server.registry import hash_secret
from fleet_server.serve import RunningServer, start_server
from ota.instructions import Instruction, sign_instruction
from ota.messages import DeviceState, Telemetry
from ota.topics import DeviceTopics
from tests.e2e.harness import Fleet
from tests.faults.telemetry_tools import enrol
from tests.report_keys import device_pem, signed

DEVICES = ("dev-a", "dev-b")
MOSQUITTO = "/usr/sbin/mosquitto"


def wait_until(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Device:
    """One enrolled device's real MQTT link, and every message it received, in order."""

    device_id: str
    secret: str
    host: str
    port: int
    outbox: Path
    received: queue.Queue[tuple[str, bytes]] = field(default_factory=queue.Queue)
    seq: int = 0
    link: MqttLink | None = None

    def start(self) -> MqttLink:
        """Connect as the agent does (a new link each time, like an agent restart)."""
        topics = DeviceTopics(self.device_id)
        link = MqttLink(device_id=self.device_id, host=self.host, port=self.port,
                        username=self.device_id, password=self.secret, will_topic=topics.state,
                        will_payload=signed(DeviceState.offline(self.device_id,
                                                                seq=self.next_seq())),
                        subscriptions=topics.device_subscriptions, outbox=Outbox(self.outbox),
                        on_message=lambda t, p: self.received.put((t, p)),
                        on_connected=lambda: link.publish_retained(topics.state,
                                                                   self.online_state()))
        self.link = link
        link.start()
        wait_until(link.connected.is_set, f"{self.device_id} connected")
        return link

    def stop(self) -> None:
        if self.link is not None:
            self.link.stop()
            self.link = None

    @property
    def live(self) -> MqttLink:
        assert self.link is not None, f"{self.device_id} is not connected"
        return self.link

    def messages(self) -> list[tuple[str, bytes]]:
        out = []
        while not self.received.empty():
            out.append(self.received.get_nowait())
        return out

    def next_message(self, timeout: float = 10.0) -> tuple[str, bytes]:
        return self.received.get(timeout=timeout)

    def next_seq(self) -> int:
        """The device's report sequence (states and telemetry share it, as an agent's do)."""
        self.seq += 1
        return self.seq

    def online_state(self) -> bytes:
        return signed(DeviceState(device_id=self.device_id, status="online", ts=time.time(),
                                  agent_version="0.1.0", applied_seq=0, seq=self.next_seq()))


@dataclass
class BrokerFleet:
    kind: str
    server: RunningServer
    host: str
    port: int
    devices: dict[str, Device]
    instruction_seq: int = 0

    @property
    def registry(self) -> Any:
        return self.server.services.registry

    def device_view(self, device_id: str) -> dict[str, Any]:
        """What the server shows of a device (its state as stored in the registry)."""
        row = self.registry.get_device(device_id=device_id)
        return {k: row[k] for k in ("online", "state", "active_bundle", "delegate")}

    def instruction(self, device_id: str) -> bytes:
        """A signed "no model change" instruction, published retained by the server."""
        self.instruction_seq += 1
        now = time.time()
        envelope = sign_instruction(
            Instruction(device_id=device_id, seq=self.instruction_seq, issued_at=now,
                        expires_at=now + 3600, deployment_id="d-attack", bundle=None),
            self.server.services.data_dir.fleet_key)
        self.server.services.bridge.publish_instruction(device_id, envelope)
        return envelope

    def telemetry(self, device_id: str) -> int:
        """``device_id`` reports one telemetry window through its link; waits until stored."""
        dev = self.devices[device_id]
        seq = dev.next_seq()
        report = Telemetry(device_id=device_id, seq=seq, ts=time.time(), window_s=10.0,
                           bundle=None, delegate=None, inferences=1, errors=0,
                           total_inferences=seq, total_errors=0)
        dev.live.publish_durable(DeviceTopics(device_id).telemetry, signed(report))
        wait_until(lambda: seq in self.telemetry_seqs(device_id), f"telemetry {seq}")
        return seq

    def telemetry_seqs(self, device_id: str) -> list[int]:
        return sorted(int(r["seq"]) for r in self.registry.list_telemetry(device_id=device_id))

    def resubscribe_desired(self, device_id: str) -> bytes:
        """Subscribe ``device_id``'s live link to its desired topic again: the broker hands
        it the retained instruction it now holds."""
        dev = self.devices[device_id]
        dev.live.client.subscribe(DeviceTopics(device_id).desired, qos=1)
        topic, payload = dev.next_message()
        assert topic == DeviceTopics(device_id).desired, topic
        return payload

    def client(self, client_id: str, username: str, password: str, *,
               clean_session: bool = True, will: tuple[str, bytes] | None = None) -> RawClient:
        return RawClient(self.host, self.port, client_id, username, password,
                         clean_session=clean_session, will=will)


class RawClient:
    """A bare paho client (an attacker's): no reconnect, records CONNACK and messages."""

    def __init__(self, host: str, port: int, client_id: str, username: str, password: str, *,
                 clean_session: bool, will: tuple[str, bytes] | None) -> None:
        self.connack: Any = None
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=clean_session, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(username, password)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.client.reconnect_delay_set(60, 60)
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        self.connack = reason
        self._connected.set()

    def wait_connack(self, timeout: float = 10.0) -> Any:
        assert self._connected.wait(timeout), "no CONNACK"
        return self.connack

    def subscribe(self, topic: str, timeout: float = 10.0) -> None:
        self._subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self._subscribed.wait(timeout), "no SUBACK"

    def drop_connection(self) -> None:
        """Close the socket without DISCONNECT: the broker sees an abnormal end (the will)."""
        sock = self.client.socket()
        assert sock is not None, "not connected"
        sock.close()

    def received(self) -> list[tuple[str, bytes]]:
        out = []
        while not self.messages.empty():
            out.append(self.messages.get_nowait())
        return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class RunningMosquitto:
    """A Mosquitto process, its files and port."""

    port: int
    files: MosquittoFiles
    proc: subprocess.Popen[bytes]
    log: Path

    def add_device(self, device_id: str, secret: str) -> None:
        """What enrolment needs on Mosquitto: the device's password line, then a reload."""
        self.files.add_client(device_id, secret)
        reloads = self.log.read_text(errors="replace").count("Reloading config")
        self.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: self.log.read_text(errors="replace").count("Reloading config")
                   > reloads, "mosquitto to reload its password file")


@contextmanager
def mosquitto(root: Path, device_secrets: dict[str, str],
              server_password: str) -> Iterator[RunningMosquitto]:
    """A real Mosquitto on a free port, configured for the fleet; stopped on exit."""
    port = free_port()
    files = MosquittoFiles(root)
    # as root Mosquitto drops to user "mosquitto", which cannot read files under tmp
    files.write(port=port, server_password=server_password,
                extra="user root\n" if os.geteuid() == 0 else "")
    for device_id, secret in device_secrets.items():
        files.add_client(device_id, secret)
    log_path = root / "mosquitto.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([MOSQUITTO, "-c", str(files.conf)], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _listening(port) or proc.poll() is not None, "mosquitto to listen")
        assert proc.poll() is None, log_path.read_text()
        yield RunningMosquitto(port, files, proc, log_path)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
    except OSError:
        return False
    return True


@contextmanager
def run_broker_fleet(kind: str, tmp: Path) -> Iterator[BrokerFleet]:
    device_secrets = {d: secrets.token_urlsafe(24) for d in DEVICES}
    with _broker(kind, tmp, device_secrets) as settings, start_server(settings) as server:
        host, port = server.services.mqtt_host, server.services.mqtt_port
        assert port is not None
        for device_id, secret in device_secrets.items():
            server.services.registry.add_device(device_id=device_id, group="default",
                                                public_key=device_pem(device_id),
                                                mqtt_secret_hash=hash_secret(secret))
        devices = {d: Device(d, s, host, port, tmp / "outbox" / d)
                   for d, s in device_secrets.items()}
        fleet = BrokerFleet(kind, server, host, port, devices)
        try:
            for dev in devices.values():
                dev.start()
            for d in DEVICES:
                wait_until(lambda d=d: fleet.registry.get_device(device_id=d)["online"],
                           f"{d} online")
            yield fleet
        finally:
            for dev in devices.values():
                dev.stop()


@contextmanager
def _broker(kind: str, tmp: Path, device_secrets: dict[str, str]) -> Iterator[ServerSettings]:
    data = tmp / "fleet"
    if kind == "embedded":
        yield ServerSettings(data_dir=data, port=0, mqtt_port=0, insecure=True)
        return
    password = secrets.token_urlsafe(24)
    with mosquitto(tmp / "mosquitto", device_secrets, password) as broker:
        yield ServerSettings(
            data_dir=data, port=0, mqtt_port=0, insecure=True,
            broker_url=f"mqtt://{SERVER_USERNAME}:{password}@127.0.0.1:{broker.port}")


def require_mosquitto() -> None:
    if not Path(MOSQUITTO).exists():
        if os.environ.get("CI"):
            pytest.fail("Mosquitto is required in CI (scripts/install-system-deps.sh installs it)")
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")


@dataclass
class FleetOnBroker:
    """A ``fleet-server serve`` process (``tests.e2e.harness.Fleet``) on either broker."""

    kind: str
    fleet: Fleet
    broker: RunningMosquitto | None

    def enrol(self, device_id: str) -> dict[str, str]:
        """``device-agent install``; on Mosquitto also the device's password line."""
        config = enrol(self.fleet, device_id)
        if self.broker is not None:
            self.broker.add_device(device_id, config["mqtt_password"])
        return config


@contextmanager
def fleet_process(kind: str, tmp: Path,
                  serve_args: tuple[str, ...] = ()) -> Iterator[FleetOnBroker]:
    """A real server process with its embedded broker, or with ``--broker`` on a real
    Mosquitto configured by ``fleet_server.mosquitto_config``; stopped on exit."""
    if kind == "embedded":
        fleet = Fleet(tmp, serve_args=serve_args)
        try:
            yield FleetOnBroker(kind, fleet, None)
        finally:
            fleet.stop()
        return
    require_mosquitto()
    password = secrets.token_urlsafe(24)
    with mosquitto(tmp / "mosquitto", {}, password) as broker:
        fleet = Fleet(tmp, broker=f"mqtt://{SERVER_USERNAME}:{password}@127.0.0.1:{broker.port}",
                      serve_args=serve_args)
        try:
            yield FleetOnBroker(kind, fleet, broker)
        finally:
            fleet.stop()
