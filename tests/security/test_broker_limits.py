"""The embedded broker's bounds on what one client can make it hold (issue 14, item 5).

A real ``EmbeddedBroker`` (amqtt, ``HardenedBroker``) over a real SQLite registry, in its own
event loop thread, with small ``BrokerLimits``; real paho clients (a device, and one under the
server's username standing for the bridge) and raw sockets for what paho will not send. Each
test asserts what was dropped, what was delivered, and the counters the server exports.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet_server.broker import EmbeddedBroker
from fleet_server.broker_auth import SERVER_USERNAME, BrokerAuthority
from fleet_server.broker_limits import BrokerLimits
from fleet_server.metrics import ServerMetrics
from fleet_server.mosquitto_config import MAX_PACKET_SIZE
from fleet_server.registry import Registry, hash_secret
from ota.limits import DEFAULT_LIMITS
from ota.topics import DeviceTopics

from .broker_fleet import BrokerFleet, RawClient, wait_until

SERVER_SECRET = "server-secret"
SECRETS = {"dev-a": "secret-a", "dev-b": "secret-b"}


@dataclass
class Bench:
    host: str
    port: int
    metrics: ServerMetrics

    def device(self, device_id: str, *, clean_session: bool = True) -> RawClient:
        c = RawClient(self.host, self.port, device_id, device_id, SECRETS[device_id],
                      clean_session=clean_session, will=None)
        assert c.wait_connack() == 0
        return c

    def server(self, *topics: str) -> RawClient:
        """A client under the server's username (as the bridge), subscribed to ``topics``."""
        c = RawClient(self.host, self.port, "edgefleet-server-test", SERVER_USERNAME,
                      SERVER_SECRET, clean_session=True, will=None)
        assert c.wait_connack() == 0
        for topic in topics:
            c.subscribe(topic)
        return c

    def dropped(self, reason: str) -> tuple[float, float]:
        """(messages, bytes) the broker dropped for ``reason``."""
        return (self.metrics.broker_dropped.labels(reason)._value.get(),
                self.metrics.broker_dropped_bytes.labels(reason)._value.get())

    def disconnects(self) -> float:
        return float(self.metrics.broker_disconnects.labels("packet_too_large")._value.get())


@contextmanager
def broker(tmp: Path, limits: BrokerLimits | None = None) -> Iterator[Bench]:
    registry = Registry(tmp / "registry.db")
    for device_id, secret in SECRETS.items():
        registry.add_device(device_id=device_id, group="default", public_key="pem",
                            mqtt_secret_hash=hash_secret(secret))
    metrics = ServerMetrics()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    b = EmbeddedBroker(host="127.0.0.1", port=0,
                       authority=BrokerAuthority(registry, SERVER_SECRET),
                       limits=limits, metrics=metrics)
    try:
        asyncio.run_coroutine_threadsafe(b.start(), loop).result(15)
        assert b.port is not None
        yield Bench("127.0.0.1", b.port, metrics)
    finally:
        asyncio.run_coroutine_threadsafe(b.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        registry.close()


def _report(device_id: str, seq: int, pad: int = 0) -> bytes:
    body = {"protocol": 1, "device_id": device_id, "seq": seq, "pad": "x" * pad}
    return json.dumps(body).encode()


def _publish(client: RawClient, topic: str, payload: bytes) -> None:
    """QoS 1 publish; returns once the broker acknowledged it (PUBACK)."""
    info = client.client.publish(topic, payload, qos=1)
    info.wait_for_publish(10)
    assert info.is_published()


def _received_seqs(client: RawClient, want: int, timeout: float = 10.0) -> list[int]:
    seqs: list[int] = []
    deadline = time.monotonic() + timeout
    while len(seqs) < want and time.monotonic() < deadline:
        seqs += [json.loads(p)["seq"] for _, p in client.received()]
        time.sleep(0.02)
    return seqs


def test_publishes_over_a_clients_rate_are_acknowledged_dropped_and_counted(
        tmp_path: Path) -> None:
    limits = BrokerLimits(burst_msgs=10, rate_msgs=0.001)
    with broker(tmp_path, limits) as bench:
        server = bench.server(DeviceTopics("dev-a").telemetry, DeviceTopics("dev-b").telemetry)
        flooder, honest = bench.device("dev-a"), bench.device("dev-b")
        topic = DeviceTopics("dev-a").telemetry
        payloads = [_report("dev-a", seq) for seq in range(1, 31)]
        for p in payloads:
            _publish(flooder, topic, p)  # every one acknowledged: the MQTT flow completes
        _publish(honest, DeviceTopics("dev-b").telemetry, _report("dev-b", 1))
        assert _received_seqs(server, 11) == [*range(1, 11), 1]  # dev-a's burst, then dev-b
        assert bench.dropped("rate_limited") == (20, sum(len(p) for p in payloads[10:]))
        # a new connection does not refill the bucket: it belongs to the username
        flooder.close()
        again = bench.device("dev-a")
        _publish(again, topic, _report("dev-a", 31))
        assert bench.dropped("rate_limited")[0] == 21
        time.sleep(0.3)
        assert server.received() == []
        assert bench.dropped("too_large") == (0, 0) and bench.disconnects() == 0
        for c in (again, honest, server):
            c.close()


def test_payload_over_its_topics_cap_is_dropped_and_the_client_stays_connected(
        tmp_path: Path) -> None:
    with broker(tmp_path) as bench:
        topic = DeviceTopics("dev-a").telemetry
        server = bench.server(topic)
        device = bench.device("dev-a")
        big = _report("dev-a", 1, pad=DEFAULT_LIMITS.max_json_payload)  # over the 256 KiB cap
        _publish(device, topic, big)
        _publish(device, topic, _report("dev-a", 2))
        assert _received_seqs(server, 1) == [2]
        assert bench.dropped("too_large") == (1, len(big))
        assert device.client.is_connected() and bench.disconnects() == 0
        assert bench.dropped("rate_limited") == (0, 0)
        device.close()
        server.close()


def _connect_raw(bench: Bench, device_id: str) -> socket.socket:
    """An MQTT 3.1.1 CONNECT by hand (clean session); returns the socket after CONNACK."""
    def field(b: bytes) -> bytes:
        return struct.pack("!H", len(b)) + b

    var = field(b"MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 30)
    body = var + field(device_id.encode()) + field(device_id.encode()) + \
        field(SECRETS[device_id].encode())
    sock = socket.create_connection((bench.host, bench.port), 10)
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00"
    return sock


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_publish_announcing_a_payload_over_the_packet_limit_is_cut_off_before_it_is_read(
        tmp_path: Path) -> None:
    """A PUBLISH header announcing 200 MiB, followed by a few bytes: the broker closes the
    connection at once instead of waiting for (and allocating) 200 MiB."""
    with broker(tmp_path) as bench:
        topic = DeviceTopics("dev-a").telemetry
        server = bench.server(topic)
        sock = _connect_raw(bench, "dev-a")
        name = topic.encode()
        head = struct.pack("!H", len(name)) + name + struct.pack("!H", 1)
        sock.sendall(bytes([0x32]) + _varint(200 * 1024 * 1024) + head + b"x" * 1000)
        sock.settimeout(10)
        try:
            assert sock.recv(1) == b""  # closed by the broker, not by our timeout
        except ConnectionResetError:
            pass
        sock.close()
        wait_until(lambda: bench.disconnects() == 1, "the disconnect counted")
        assert server.received() == []
        # the same device may connect again and report
        device = bench.device("dev-a")
        _publish(device, topic, _report("dev-a", 7))
        assert _received_seqs(server, 1) == [7]
        device.close()
        server.close()


def test_offline_sessions_queue_keeps_at_most_its_bound_and_counts_the_rest(
        tmp_path: Path) -> None:
    limits = BrokerLimits(queue_messages=5)
    with broker(tmp_path, limits) as bench:
        ack = DeviceTopics("dev-a").ack
        device = bench.device("dev-a", clean_session=False)
        device.subscribe(ack)
        device.close()  # offline, persistent session
        server = bench.server()
        sent = [_report("dev-a", seq) for seq in range(1, 9)]
        for p in sent:
            _publish(server, ack, p)
        wait_until(lambda: bench.dropped("queue_full")[0] == 3, "drops counted")
        assert bench.dropped("queue_full")[1] == sum(len(p) for p in sent[5:])
        back = bench.device("dev-a", clean_session=False)
        assert _received_seqs(back, 5) == [1, 2, 3, 4, 5]  # the newest were dropped
        time.sleep(0.3)
        assert back.received() == []
        back.close()
        server.close()


def test_messages_for_a_subscriber_that_stops_reading_are_bounded(tmp_path: Path) -> None:
    """A connected client that never acknowledges: the broker holds at most
    ``queue_messages`` for it (each waits for its PUBACK) and drops the rest."""
    limits = BrokerLimits(queue_messages=5)
    with broker(tmp_path, limits) as bench:
        ack = DeviceTopics("dev-a").ack
        sock = _connect_raw(bench, "dev-a")
        name = ack.encode()
        sub = struct.pack("!H", 1) + struct.pack("!H", len(name)) + name + b"\x01"
        sock.sendall(bytes([0x82, len(sub)]) + sub)
        assert sock.recv(5) == b"\x90\x03\x00\x01\x01"  # SUBACK, QoS 1 granted
        server = bench.server()
        for seq in range(1, 21):
            _publish(server, ack, _report("dev-a", seq))
        # the broker waits 5 s for each PUBACK; all 20 went through well within that
        wait_until(lambda: bench.dropped("queue_full")[0] >= 15, "drops counted")
        assert bench.dropped("queue_full")[0] == 15
        sock.close()
        server.close()


@pytest.mark.parametrize("field", ["rate_msgs", "queue_bytes", "max_packet_payload"])
def test_broker_limits_refuse_a_non_positive_value(field: str) -> None:
    with pytest.raises(ValueError, match=f"broker limit {field} must be a positive number"):
        BrokerLimits(**{field: 0})


def test_server_broker_limits_follow_the_telemetry_limits() -> None:
    """The defaults are the server's bounds for default telemetry limits, and raising a
    telemetry limit (``--telemetry-limit``) raises the broker's in step."""
    from fleet_server.telemetry_limits import TelemetryLimits

    assert BrokerLimits.for_telemetry(TelemetryLimits()) == BrokerLimits()
    raised = BrokerLimits.for_telemetry(TelemetryLimits(rate_msgs=1000, burst_msgs=5000))
    assert (raised.rate_msgs, raised.burst_msgs) == (4000, 10000)


def test_publish_over_the_largest_protocol_message_disconnects_on_either_broker(
        broker_fleet: BrokerFleet) -> None:
    """An enrolled device publishes a payload larger than a chunk frame: the embedded broker
    and Mosquitto (``max_packet_size`` from ``fleet_server.mosquitto_config``) close its
    connection; nothing reaches the server and the other device keeps reporting."""
    attacker, victim = broker_fleet.devices["dev-a"], broker_fleet.devices["dev-b"]
    before = broker_fleet.telemetry_seqs("dev-a")
    attacker.stop()
    raw = broker_fleet.client("dev-a", "dev-a", attacker.secret)
    assert raw.wait_connack() == 0
    lost = threading.Event()
    raw.client.on_disconnect = lambda *a: lost.set()
    raw.client.publish(DeviceTopics("dev-a").telemetry,
                       _report("dev-a", 9999, pad=MAX_PACKET_SIZE), qos=1)
    assert lost.wait(20), "the broker kept the connection"
    raw.close()
    assert broker_fleet.telemetry_seqs("dev-a") == before
    if broker_fleet.kind == "embedded":
        m = broker_fleet.server.services.metrics
        assert m.broker_disconnects.labels("packet_too_large")._value.get() == 1
    broker_fleet.telemetry("dev-b")  # the other device is unaffected
    assert victim.live.connected.is_set()
