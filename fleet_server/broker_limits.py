"""Bounds the embedded broker puts on what one client can make it hold (issue 14, item 5).

amqtt reads every PUBLISH whole, queues it for its sender's session with no bound, and
keeps every message for a slow or offline subscriber, so a device flooding large reports
grew the server's memory at the flood's speed, before the bridge's rate limit saw anything.
``HardenedBroker`` (``broker_fixes.py``) applies four bounds, each counted in the server's
metrics (``edgefleet_broker_dropped_messages_total{reason}``, ``..._bytes_total``,
``edgefleet_broker_disconnects_total``):

- a PUBLISH whose payload exceeds ``max_packet_payload`` (the protocol's largest message,
  a chunk frame) closes the connection before its payload is read (``CappedReader``);
- a payload over its topic's protocol cap (``payload_cap``) is dropped, reason
  ``too_large``;
- each client has token buckets on messages and bytes (``rate_*``/``burst_*``, keyed by
  the username it authenticated as, so reconnecting does not refill them); what exceeds
  them is dropped, reason ``rate_limited``. The server's own connection is exempt;
- each session holds at most ``queue_messages`` and ``queue_bytes`` of messages on their
  way to it (sent and awaiting PUBACK, or queued while it is offline); a message beyond
  that is dropped, reason ``queue_full``.

A dropped QoS 1 message is still acknowledged to its sender (the MQTT flow completes, as in
Mosquitto's ``message_size_limit``): device reports are confirmed end to end by the server's
``ReportAck``, so the device's outbox sends an unconfirmed report again later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from amqtt.adapters import ReaderAdapter
from amqtt.errors import AMQTTError
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler

from fleet_server.metrics import ServerMetrics
from fleet_server.telemetry_limits import KIB, MIB, DeviceRateLimiter, TelemetryLimits
from ota.errors import ProtocolError
from ota.limits import DEFAULT_LIMITS
from ota.topics import parse_device_topic

DROP_REASONS = ("rate_limited", "too_large", "queue_full")


@dataclass(frozen=True)
class BrokerLimits:
    """Per-client bounds of the embedded broker. The defaults sit well above a healthy
    device (a report every few seconds, a chunk request per window of chunks, a backlog
    drained after an outage) and well below what fills a server's memory."""

    rate_msgs: float = 20.0
    """Messages a client may publish per second, sustained."""
    burst_msgs: int = 200
    """Messages a client may publish at once above the sustained rate."""
    rate_bytes: float = 256 * KIB
    """Payload bytes a client may publish per second, sustained."""
    burst_bytes: int = 4 * MIB
    """Payload bytes a client may publish at once above the sustained rate."""
    queue_messages: int = 1000
    """Messages on their way to one session (in flight, or queued while it is offline)."""
    queue_bytes: int = 32 * MIB
    """Payload bytes on their way to one session."""
    max_packet_payload: int = DEFAULT_LIMITS.max_chunk_frame
    """Largest PUBLISH payload read at all; a larger one closes the connection."""
    clients_tracked: int = 100_000
    """Rate-limit buckets kept (least recently used are forgotten)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"broker limit {f.name} must be a positive number, "
                                 f"got {value!r}")
        if self.burst_bytes < DEFAULT_LIMITS.max_json_payload:
            raise ValueError("broker limit burst_bytes must hold one report of the "
                             f"protocol's largest size ({DEFAULT_LIMITS.max_json_payload})")

    @classmethod
    def for_telemetry(cls, t: TelemetryLimits) -> BrokerLimits:
        """The server's bounds: per client, four times the rate and twice the burst of its
        telemetry limits (room for state, events and chunk requests besides reports), so
        raising ``--telemetry-limit`` raises the broker's too. The defaults are these for
        the default ``TelemetryLimits``."""
        return cls(rate_msgs=4 * t.rate_msgs, burst_msgs=2 * t.burst_msgs,
                   rate_bytes=4 * t.rate_bytes, burst_bytes=2 * t.burst_bytes,
                   clients_tracked=t.max_devices_tracked)

    def rate_limiter(self) -> DeviceRateLimiter:
        """The bridge's token buckets (two per client), with this broker's rates."""
        return DeviceRateLimiter(TelemetryLimits(
            rate_msgs=self.rate_msgs, burst_msgs=self.burst_msgs, rate_bytes=self.rate_bytes,
            burst_bytes=self.burst_bytes, max_devices_tracked=self.clients_tracked))


def payload_cap(topic: str) -> int:
    """The protocol's size limit for a payload on ``topic`` (``ota.limits``)."""
    try:
        _, kind = parse_device_topic(topic)
    except ProtocolError:
        return DEFAULT_LIMITS.max_json_payload  # not a protocol topic (the ACL decides)
    if kind == "desired":
        return DEFAULT_LIMITS.max_instruction_payload
    if kind == "chunks":
        return DEFAULT_LIMITS.max_chunk_frame
    return DEFAULT_LIMITS.max_json_payload


class BrokerCounters:
    """What the broker dropped, into the server's metrics (its own when it has none)."""

    def __init__(self, metrics: ServerMetrics | None = None) -> None:
        self.metrics = metrics if metrics is not None else ServerMetrics()

    def dropped(self, reason: str, size: int) -> None:
        self.metrics.broker_dropped.labels(reason).inc()
        self.metrics.broker_dropped_bytes.labels(reason).inc(size)

    def disconnected(self, reason: str) -> None:
        self.metrics.broker_disconnects.labels(reason).inc()


class PacketTooLarge(AMQTTError):
    """A client announced a payload over ``max_packet_payload``."""


class CappedReader(ReaderAdapter):
    """A connection's reader that refuses a read over ``limit`` bytes before reading it.

    amqtt reads a PUBLISH payload with one ``read(length)``; refusing that read closes the
    connection (amqtt's reader loop ends on an exception it does not know) without
    allocating the payload."""

    def __init__(self, inner: ReaderAdapter, limit: int, on_refused: Callable[[], None]) -> None:
        self._inner = inner
        self._limit = limit
        self._on_refused = on_refused

    async def read(self, n: int = -1) -> bytes:
        if n > self._limit:
            self._on_refused()
            raise PacketTooLarge(f"payload of {n} bytes over the broker's limit {self._limit}")
        data: bytes = await self._inner.read(n)
        return data

    def feed_eof(self) -> None:
        self._inner.feed_eof()


class AdmittingQueue(asyncio.Queue[Any]):
    """An amqtt session queue that drops a message ``admit`` refuses (``admit`` counts it).

    amqtt puts through ``put``/``put_nowait`` and never waits on a full queue (no maxsize),
    so refusing in ``put_nowait`` drops the message and lets the MQTT flow complete.
    ``bytes`` is the payload held."""

    def __init__(self, admit: Callable[[AdmittingQueue, Any], bool]) -> None:
        super().__init__()
        self._admit = admit
        self.bytes = 0

    def put_nowait(self, item: Any) -> None:
        if self._admit(self, item):
            super().put_nowait(item)

    def _put(self, item: Any) -> None:
        self.bytes += len(item.data or b"")
        super()._put(item)

    def _get(self) -> Any:
        item = super()._get()
        self.bytes -= len(item.data or b"")
        return item


class BoundedHandler(BrokerProtocolHandler):
    """amqtt's per-connection handler, holding at most ``queue_messages``/``queue_bytes`` of
    messages on their way to its client (each publish waits for the write and, at QoS 1,
    the PUBACK); beyond that a message is dropped (reason ``queue_full``)."""

    limits: BrokerLimits | None = None
    counters: BrokerCounters | None = None
    pending_messages = 0
    pending_bytes = 0

    def bind(self, limits: BrokerLimits, counters: BrokerCounters) -> None:
        self.limits, self.counters = limits, counters

    async def mqtt_publish(self, topic: str, data: bytes | bytearray, qos: int | None,
                           retain: bool, ack_timeout: int | None = None) -> Any:
        size = len(data)
        lim = self.limits
        if lim is not None and self.counters is not None and (
                self.pending_messages >= lim.queue_messages
                or self.pending_bytes + size > lim.queue_bytes):
            self.counters.dropped("queue_full", size)
            return None
        self.pending_messages += 1
        self.pending_bytes += size
        try:
            return await super().mqtt_publish(topic, data, qos, retain, ack_timeout)
        finally:
            self.pending_messages -= 1
            self.pending_bytes -= size
