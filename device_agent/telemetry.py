"""Inference counters and a bounded latency window, snapshotted into telemetry records.

``record`` is on the hot path: it takes a lock, writes one float into a preallocated ring
buffer, bumps counters and tells the Prometheus ``observer`` (if any), under that lock. ``snapshot``
computes p50/p95/p99 over the window since the previous snapshot and resets the window
counters.
"""

from __future__ import annotations

import threading
from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LatencyWindow", "TelemetryRecorder", "WindowStats"]


class LatencyWindow:
    """The last ``capacity`` latencies (ms) in a ring buffer."""

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        # array.array: a store is ~4x cheaper than into a numpy array, same 8 bytes a value
        self._buf = array("d", bytes(8 * capacity))
        self._cap = capacity
        self._n = 0
        self._i = 0

    def add(self, value_ms: float) -> None:
        self._buf[self._i] = value_ms
        self._i = (self._i + 1) % self._cap
        if self._n < self._cap:
            self._n += 1

    def __len__(self) -> int:
        return self._n

    def clear(self) -> None:
        self._n = 0
        self._i = 0

    def percentiles(self) -> dict[str, float] | None:
        if self._n == 0:
            return None
        window = np.frombuffer(self._buf, dtype=np.float64, count=self._n)
        p50, p95, p99 = latency_percentiles(window)
        return {"p50": round(p50, 4), "p95": round(p95, 4), "p99": round(p99, 4)}


def latency_percentiles(values: np.ndarray) -> tuple[float, float, float]:
    """p50, p95 and p99 of ``values`` (non-empty), as ``np.percentile``'s default (linear)
    method computes them. Spelled out because ``np.percentile``'s first call imports
    ``numpy.ma``, about 2 MiB of resident memory the agent never uses otherwise."""
    s = np.sort(values)
    out = []
    for q in (0.50, 0.95, 0.99):
        pos = q * (len(s) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        a, b, t = float(s[lo]), float(s[hi]), pos - lo
        # numpy's _lerp: from the nearer end, so t = 0 and t = 1 give a and b exactly
        out.append(a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t))
    return out[0], out[1], out[2]


@dataclass(frozen=True)
class WindowStats:
    window_s: float
    inferences: int
    errors: int
    total_inferences: int
    total_errors: int
    latency_ms: dict[str, float] | None


class TelemetryRecorder:
    """Thread-safe counters for one agent."""

    def __init__(self, capacity: int = 4096, clock: object = None) -> None:
        import time

        self._clock = clock if callable(clock) else time.monotonic
        self._lock = threading.Lock()
        self._window = LatencyWindow(capacity)
        self._inferences = 0
        self._errors = 0
        self.total_inferences = 0
        self.total_errors = 0
        self._since = self._clock()
        self.observer: Any = None
        """An ``InferenceObserver`` (``device_agent.metrics``) told of every call, or None."""

    def record(self, latency_ms: float) -> None:
        with self._lock:
            self._window.add(latency_ms)
            self._inferences += 1
            self.total_inferences += 1
            if (obs := self.observer) is not None:
                obs.ok(latency_ms)  # its counts are plain numbers: updated under this lock

    def record_error(self) -> None:
        with self._lock:
            self._errors += 1
            self.total_errors += 1
        if (obs := self.observer) is not None:
            obs.error()

    def snapshot(self) -> WindowStats:
        """Stats for the window since the last snapshot; starts a new window."""
        with self._lock:
            now = self._clock()
            stats = WindowStats(
                window_s=round(max(0.0, now - self._since), 3),
                inferences=self._inferences,
                errors=self._errors,
                total_inferences=self.total_inferences,
                total_errors=self.total_errors,
                latency_ms=self._window.percentiles(),
            )
            self._window.clear()
            self._inferences = 0
            self._errors = 0
            self._since = now
            return stats
