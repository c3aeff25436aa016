"""The health gate's last step: a smoke inference within the latency budget.

``ModelRuntime.load(gate=True)`` already proved the bundle loads and its golden vectors
pass on the chosen delegate. ``smoke_check`` then runs the golden inputs (zeros of the
declared shapes when the bundle has none): one warm-up run, then the median of three
timed runs must be within the budget: the deployment's, else the manifest's
``latency_budget_ms``; no budget means only "it runs".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from device_agent import bundle_access as ba
from device_agent.telemetry import latency_percentiles

__all__ = ["SmokeResult", "smoke_check"]

TIMED_RUNS = 3


@dataclass(frozen=True)
class SmokeResult:
    passed: bool
    latency_ms: float
    budget_ms: float | None
    detail: str


def _feeds(rt: Any) -> dict[str, np.ndarray]:
    if rt.manifest.golden is not None:
        inputs, _ = ba.read_golden(rt.slot_dir, rt.manifest)
        return {k: np.asarray(v) for k, v in dict(inputs).items()}
    feeds = {}
    for t in rt.manifest.inputs:
        shape = [d if isinstance(d, int) else 1 for d in t.shape]
        feeds[t.name] = np.zeros(shape, dtype=np.dtype(t.dtype))
    return feeds


def smoke_check(rt: Any, budget_ms: float | None = None) -> SmokeResult:
    """Run the smoke inference on ``rt`` (a ``ModelRuntime``); never raises."""
    budget = budget_ms if budget_ms is not None else rt.manifest.latency_budget_ms
    try:
        feeds = _feeds(rt)
        rt.run_feeds(feeds)
        times = []
        for _ in range(TIMED_RUNS):
            t0 = time.perf_counter()
            rt.run_feeds(feeds)
            times.append((time.perf_counter() - t0) * 1000.0)
    except Exception as e:  # any failure fails the gate, with the reason
        return SmokeResult(False, float("inf"), budget, f"smoke inference failed: {e}")
    ms = latency_percentiles(np.asarray(times))[0]  # the median
    if budget is not None and ms > budget:
        return SmokeResult(False, ms, budget,
                           f"smoke inference took {ms:.3f} ms, over the budget of {budget} ms")
    return SmokeResult(True, ms, budget, f"smoke inference {ms:.3f} ms")
