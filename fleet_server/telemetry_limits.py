"""Bounds on what devices may make the server ingest and keep: rates, queue, retention.

Pure values and policies (no sockets, no threads): ``TelemetryLimits`` is the setting,
``DeviceRateLimiter`` the per-device token buckets the MQTT bridge consults before it parses
a report, ``LogThrottle`` caps how many lines a flood of rejected messages can write.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields

KIB = 1024
MIB = 1024 * KIB


class LimitsError(ValueError):
    """A telemetry limit is out of range or names no setting."""


@dataclass(frozen=True)
class TelemetryLimits:
    """Per-device ingestion and retention bounds (``fleet-server serve --telemetry-limit``).

    The defaults leave a real agent (one report and at most one shadow report per telemetry
    interval, a burst of install events, a backlog after an outage drained at ``rate_msgs``)
    far below every bound.
    """

    rate_msgs: float = 5.0
    """Reports (telemetry, events, shadow) a device may send per second, sustained."""
    burst_msgs: int = 100
    """Reports a device may send at once above the sustained rate."""
    rate_bytes: float = 64 * KIB
    """Report bytes a device may send per second, sustained."""
    burst_bytes: int = 2 * MIB
    """Report bytes a device may send at once above the sustained rate."""
    queue_messages: int = 1000
    """Messages received but not yet stored; when full the bridge stops reading (back-pressure)."""
    keep_rows: int = 10_000
    """Telemetry rows (and, separately, event rows) kept per device; older ones are pruned."""
    keep_days: float = 30.0
    """Telemetry and event rows older than this (by their ``ts``) are pruned."""
    prune_interval_s: float = 60.0
    """How often retention runs."""
    max_devices_tracked: int = 100_000
    """Rate-limit buckets kept in memory (least recently used are forgotten)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise LimitsError(f"telemetry limit {f.name} must be a positive number, "
                                  f"got {value!r}")
        if self.burst_bytes < 256 * KIB:
            raise LimitsError("telemetry limit burst_bytes must be at least 262144 "
                              "(one report of the protocol's largest size)")

    @classmethod
    def parse(cls, items: list[str]) -> TelemetryLimits:
        """``["rate_msgs=50", "keep_rows=1000"]`` over the defaults."""
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, float | int] = {}
        for item in items:
            key, sep, raw = item.partition("=")
            if not sep or key not in known:
                raise LimitsError(f"bad telemetry limit {item!r}: want KEY=VALUE with KEY one "
                                  f"of {', '.join(known)}")
            try:
                values[key] = int(raw) if known[key] in (int, "int") else float(raw)
            except ValueError as e:
                raise LimitsError(f"bad telemetry limit {item!r}: {raw!r} is not a number") from e
        return cls(**values)  # type: ignore[arg-type]


class TokenBucket:
    """Capacity ``burst`` tokens, refilled at ``rate`` per second."""

    __slots__ = ("burst", "rate", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = float(burst), now

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now


class DeviceRateLimiter:
    """Two buckets per device (messages and bytes); a report passes only if both have room.

    Not thread-safe: the bridge calls it from its one network thread."""

    def __init__(self, limits: TelemetryLimits,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._buckets: collections.OrderedDict[str, tuple[TokenBucket, TokenBucket]] = (
            collections.OrderedDict())

    def allow(self, device_id: str, size: int) -> bool:
        now = self._clock()
        pair = self._buckets.get(device_id)
        if pair is None:
            lim = self._limits
            pair = (TokenBucket(lim.rate_msgs, lim.burst_msgs, now),
                    TokenBucket(lim.rate_bytes, lim.burst_bytes, now))
            self._buckets[device_id] = pair
            if len(self._buckets) > self._limits.max_devices_tracked:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(device_id)
        msgs, octets = pair
        msgs.refill(now)
        octets.refill(now)
        if msgs.tokens < 1 or octets.tokens < size:
            return False
        msgs.tokens -= 1
        octets.tokens -= size
        return True


class LogThrottle:
    """At most ``lines`` log lines per ``period_s``; counts what it suppressed (thread-safe:
    the MQTT network thread and the ingest worker share one)."""

    def __init__(self, lines: int = 10, period_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lines, self._period = lines, period_s
        self._clock = clock
        self._window_start = clock()
        self._used = 0
        self.suppressed = 0
        self._lock = threading.Lock()

    def allow(self) -> tuple[bool, int]:
        """(may log now, lines suppressed since the last allowed one)."""
        with self._lock:
            now = self._clock()
            if now - self._window_start >= self._period:
                self._window_start, self._used = now, 0
            if self._used >= self._lines:
                self.suppressed += 1
                return False, 0
            self._used += 1
            suppressed, self.suppressed = self.suppressed, 0
            return True, suppressed
