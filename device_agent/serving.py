"""The served model: the one place a predict runs, and a swap that drains before it closes.

``ServingHolder`` holds the active ``ModelRuntime`` and a count of the predicts running on
each runtime it handed out. ``predict`` takes the current runtime, counts itself in, runs and
counts itself out. ``swap(new)`` makes ``new`` current at once (new requests go to it), then
waits until the old runtime has no predict in flight (at most ``drain_s``) before closing
it, so a request that already holds the old runtime finishes on it instead of failing on a
closed session. A request that picked a runtime up (``view()``) but starts its predict
after that runtime was retired runs on the current one.

The local API and ``Agent.predict`` both go through here (docs/local-api.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from device_agent.errors import NoModelError
from device_agent.runtime import ModelRuntime, Prediction

__all__ = ["DEFAULT_DRAIN_S", "ServedRuntime", "ServingHolder"]

log = logging.getLogger(__name__)
DEFAULT_DRAIN_S = 30.0
"""Longest a swap waits for predicts in flight on the old runtime before it closes it."""
_RETIRED = "_edgefleet_retired"


class ServingHolder:
    def __init__(self, *, drain_s: float = DEFAULT_DRAIN_S,
                 on_swap: Callable[[ModelRuntime | None], None] = lambda rt: None) -> None:
        self.drain_s = drain_s
        self.on_swap = on_swap
        # predicts count themselves in and out under a plain lock (C-level, the hot path);
        # a draining swap waits on a condition over the same lock, notified only then
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._draining = 0
        self._current: ModelRuntime | None = None
        self._in_flight: dict[int, int] = {}  # id(runtime) -> predicts running on it
        self.swap_timeouts = 0
        """Swaps that closed an old runtime with predicts still running (drain_s passed)."""

    @property
    def current(self) -> ModelRuntime | None:
        return self._current

    def view(self) -> ServedRuntime | None:
        """The current runtime for a caller that reads its metadata before predicting (the
        local API): attributes come from that runtime, ``predict`` goes through here."""
        rt = self._current
        return None if rt is None else ServedRuntime(self, rt)

    def predict(self, inputs: Mapping[str, Any], *, prefer: ModelRuntime | None = None
                ) -> Prediction:
        """Run ``inputs`` on the current runtime (or on ``prefer`` while it is not
        retired). ``NoModelError`` when nothing is served, ``PredictError`` for bad input."""
        with self._lock:  # count in (counted out below)
            rt = prefer if prefer is not None and not getattr(prefer, _RETIRED, False) else (
                self._current)
            if rt is None:
                raise NoModelError("no model is active")
            key, in_flight = id(rt), self._in_flight
            in_flight[key] = in_flight.get(key, 0) + 1
        try:
            return rt.predict(inputs)
        finally:  # count out, inline (every predict's path: a method call costs ~0.1 us)
            with self._lock:
                n = in_flight[key] - 1
                if n:
                    in_flight[key] = n
                else:
                    del in_flight[key]
                    if self._draining:
                        self._cond.notify_all()

    def swap(self, new: ModelRuntime | None) -> None:
        """Serve ``new`` from now on; close the old runtime once its predicts drained."""
        with self._lock:
            old, self._current = self._current, new
        self.on_swap(new)
        if old is None or old is new:
            return
        with self._cond:
            setattr(old, _RETIRED, True)  # a view that still holds it predicts on ``new``
            deadline = time.monotonic() + self.drain_s
            self._draining += 1
            try:
                while self._in_flight.get(id(old), 0):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self.swap_timeouts += 1
                        log.warning("closing %s with %d predicts still running after %.0f s",
                                    old.bundle, self._in_flight[id(old)], self.drain_s)
                        break
                    self._cond.wait(left)
            finally:
                self._draining -= 1
            self._in_flight.pop(id(old), None)
        old.close()


class ServedRuntime:
    """A runtime as one caller saw it: metadata of that runtime, predict through the
    holder (so a swap drains it, and a retired one hands over to the current)."""

    def __init__(self, holder: ServingHolder, runtime: ModelRuntime) -> None:
        self._holder = holder
        self._runtime = runtime

    def predict(self, inputs: Mapping[str, Any]) -> Prediction:
        return self._holder.predict(inputs, prefer=self._runtime)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)
