"""Shadow comparison math and its per-window aggregate, in bounded memory (pure, no I/O).

``compare`` turns one (active, candidate) output pair into a ``Comparison``; a
``ShadowWindow`` sums comparisons into counters and keeps latencies in fixed-size
reservoirs, so a window costs the same memory at 1 or 1,000,000 samples.

What is compared: the first floating-point output of the manifest that both models
produce (``scores``/``probabilities`` of a classifier, the value of a regressor, the vector
of an embedding), with rows along the first axis.

- classifier: ``top1_agreement`` is the share of rows whose arg-max class is the same;
  ``score_delta_mean`` the mean, over rows, of the candidate's score minus the active
  model's score for the active model's top-1 class (negative: the candidate is less sure).
- every task: ``mae`` (mean absolute error over all elements), ``max_abs_error``, and
  ``cosine``: mean over rows of the cosine similarity of the two rows (a 0-d or 1-d output is
  one row per call; two all-zero rows count as 1.0, one all-zero row as 0.0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from device_agent.telemetry import latency_percentiles

__all__ = ["Comparison", "OutputMismatch", "Reservoir", "ShadowWindow", "WindowSummary", "compare",
           "pick_output"]


class OutputMismatch(ValueError):
    """The candidate's outputs cannot be compared with the active model's."""


def pick_output(names: Sequence[str], active: Mapping[str, np.ndarray]) -> str | None:
    """The first output (manifest order) that is a floating-point array."""
    for name in names:
        arr = active.get(name)
        if arr is not None and np.asarray(arr).dtype.kind == "f":
            return name
    return None


@dataclass(frozen=True)
class Comparison:
    rows: int
    agree: int | None
    score_delta_sum: float | None
    abs_err_sum: float
    elements: int
    max_abs_error: float
    cosine_sum: float


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(1, -1) if a.ndim <= 1 else a.reshape(a.shape[0], -1)


def compare(task: str, active: np.ndarray, candidate: np.ndarray) -> Comparison:
    a = np.asarray(active, dtype=np.float64)
    c = np.asarray(candidate, dtype=np.float64)
    if a.shape != c.shape:
        raise OutputMismatch(f"candidate output shape {list(c.shape)} != active {list(a.shape)}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(c))):
        raise OutputMismatch("non-finite output values")
    diff = np.abs(a - c)
    ra, rc = _rows(a), _rows(c)
    na, nc = np.linalg.norm(ra, axis=1), np.linalg.norm(rc, axis=1)
    both_zero = (na == 0) & (nc == 0)
    denom = np.where(na * nc == 0, 1.0, na * nc)
    cos = np.where(both_zero, 1.0, np.clip(np.sum(ra * rc, axis=1) / denom, -1.0, 1.0))
    agree = delta = None
    if task == "classifier" and ra.shape[1] >= 1:
        top_a = np.argmax(ra, axis=1)
        agree = int(np.sum(top_a == np.argmax(rc, axis=1)))
        idx = np.arange(ra.shape[0])
        delta = float(np.sum(rc[idx, top_a] - ra[idx, top_a]))
    return Comparison(rows=ra.shape[0], agree=agree, score_delta_sum=delta,
                      abs_err_sum=float(diff.sum()), elements=int(diff.size),
                      max_abs_error=float(diff.max()) if diff.size else 0.0,
                      cosine_sum=float(cos.sum()))


class Reservoir:
    """A uniform sample of at most ``size`` floats (algorithm R)."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size = size
        self.values: list[float] = []
        self.seen = 0
        self._rng = rng

    def add(self, v: float) -> None:
        if len(self.values) < self.size:
            self.values.append(v)
        else:
            k = int(self._rng.integers(0, self.seen + 1))
            if k < self.size:
                self.values[k] = v
        self.seen += 1

    def percentiles(self) -> dict[str, float] | None:
        if not self.values:
            return None
        p50, p95, p99 = latency_percentiles(np.asarray(self.values, dtype=np.float64))
        return {"p50": p50, "p95": p95, "p99": p99}


@dataclass(frozen=True)
class WindowSummary:
    samples: int
    dropped: int
    candidate_errors: int
    top1_agreement: float | None
    score_delta_mean: float | None
    mae: float | None
    max_abs_error: float | None
    cosine: float | None
    latency_ms_active: dict[str, float] | None
    latency_ms_candidate: dict[str, float] | None


@dataclass
class ShadowWindow:
    """Running sums of one window; ``summary()`` reads them, ``reset()`` starts the next."""

    task: str
    latency_reservoir: int = 1024
    seed: int = 0
    samples: int = 0
    dropped: int = 0
    candidate_errors: int = 0
    _rows: int = 0
    _cls_rows: int = 0
    _agree: int = 0
    _delta: float = 0.0
    _abs: float = 0.0
    _elements: int = 0
    _max: float = 0.0
    _cos: float = 0.0
    _lat_a: Reservoir = field(init=False)
    _lat_c: Reservoir = field(init=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self.reset()

    def reset(self) -> None:
        self.samples = self.dropped = self.candidate_errors = 0
        self._rows = self._cls_rows = self._agree = self._elements = 0
        self._delta = self._abs = self._max = self._cos = 0.0
        self._lat_a = Reservoir(self.latency_reservoir, self._rng)
        self._lat_c = Reservoir(self.latency_reservoir, self._rng)

    def add(self, c: Comparison, active_ms: float, candidate_ms: float) -> None:
        self.samples += 1
        self._rows += c.rows
        if c.agree is not None and c.score_delta_sum is not None:
            self._cls_rows += c.rows
            self._agree += c.agree
            self._delta += c.score_delta_sum
        self._abs += c.abs_err_sum
        self._elements += c.elements
        self._max = max(self._max, c.max_abs_error)
        self._cos += c.cosine_sum
        self.add_latency(active_ms, candidate_ms)

    def add_latency(self, active_ms: float, candidate_ms: float) -> None:
        if math.isfinite(active_ms) and active_ms >= 0:
            self._lat_a.add(active_ms)
        if math.isfinite(candidate_ms) and candidate_ms >= 0:
            self._lat_c.add(candidate_ms)

    def add_error(self) -> None:
        self.candidate_errors += 1

    def add_dropped(self, n: int = 1) -> None:
        self.dropped += n

    def summary(self) -> WindowSummary:
        rows = self._rows
        cls = self.task == "classifier" and self._cls_rows > 0
        return WindowSummary(
            samples=self.samples,
            dropped=self.dropped,
            candidate_errors=self.candidate_errors,
            top1_agreement=self._agree / self._cls_rows if cls else None,
            score_delta_mean=self._delta / self._cls_rows if cls else None,
            mae=self._abs / self._elements if self._elements else None,
            max_abs_error=self._max if self._elements else None,
            cosine=max(-1.0, min(1.0, self._cos / rows)) if rows else None,
            latency_ms_active=self._lat_a.percentiles(),
            latency_ms_candidate=self._lat_c.percentiles(),
        )


def as_float_dict(outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in outputs.items()}
