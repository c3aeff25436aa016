"""Input drift: bounded sketches of live inputs compared with a bundle's reference stats.

Pure numpy, no I/O. ``psi`` and ``ks_2samp`` are the two statistics; ``DriftSketch`` keeps,
per input and feature, a histogram over the reference bin edges (exact, a few counters) and
a reservoir sample of live values (at most ``reservoir`` rows) for the KS test. Memory is
bounded by ``features * (bins + reservoir)`` numbers per input, whatever the traffic.

Per input, one ``InputDrift`` is reported: ``psi`` and ``ks_stat`` are the largest over the
input's features, ``ks_pvalue`` is the smallest p-value times the number of features
(Bonferroni, capped at 1), and the input is ``drifted`` when PSI > 0.2 or that p-value is
below 0.05. Conventional PSI reading: < 0.1 stable, 0.1-0.2 moderate shift, > 0.2 drifted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from model_bundles.input_stats import InputReference, InputStats, bin_index, feature_matrix
from ota.messages import InputDrift

__all__ = [
    "KS_ALPHA",
    "PSI_DRIFTED",
    "PSI_MODERATE",
    "DriftSketch",
    "ks_2samp",
    "psi",
    "psi_level",
]

PSI_MODERATE = 0.1
PSI_DRIFTED = 0.2
KS_ALPHA = 0.05
PSI_EPSILON = 1e-4
"""Proportions are floored at this before the log (empty bins would make PSI infinite)."""
MIN_ROWS = 20
"""An input is reported only once its window holds at least this many rows."""


def psi(expected: np.ndarray, actual: np.ndarray, eps: float = PSI_EPSILON) -> float:
    """Population stability index: sum((a - e) * ln(a / e)) over bins."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), eps)
    a = np.maximum(np.asarray(actual, dtype=np.float64), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_level(value: float) -> str:
    if value > PSI_DRIFTED:
        return "drifted"
    return "moderate" if value >= PSI_MODERATE else "stable"


def _kolmogorov_q(lam: float) -> float:
    """Survival function of the Kolmogorov distribution (Numerical Recipes ``probks``)."""
    if lam < 1e-3:
        return 1.0
    total, sign, prev = 0.0, 1.0, 0.0
    for k in range(1, 101):
        term = sign * 2.0 * math.exp(-2.0 * k * k * lam * lam)
        total += term
        if abs(term) <= 1e-10 * prev or abs(term) <= 1e-12 * total:
            return min(1.0, max(0.0, total))
        sign, prev = -sign, abs(term)
    return 1.0  # did not converge: lam is tiny


def ks_2samp(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and asymptotic p-value (two-sided)."""
    a = np.sort(np.asarray(x, dtype=np.float64).ravel())
    b = np.sort(np.asarray(y, dtype=np.float64).ravel())
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        raise ValueError("ks_2samp needs two non-empty samples")
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / n
    cdf_b = np.searchsorted(b, grid, side="right") / m
    d = float(np.max(np.abs(cdf_a - cdf_b)))
    en = math.sqrt(n * m / (n + m))
    p = _kolmogorov_q((en + 0.12 + 0.11 / en) * d)
    return d, p


@dataclass
class _InputSketch:
    ref: InputReference
    edges: list[np.ndarray]
    counts: np.ndarray  # [features, max_bins]
    reservoir: np.ndarray  # [reservoir, features]
    seen: int = 0


class DriftSketch:
    """Live-input sketches for one reference; ``update`` per sample, ``report`` per window.

    Not thread safe: the shadow worker is its only user.
    """

    def __init__(self, stats: InputStats, *, reservoir: int = 256, seed: int = 0) -> None:
        self.stats = stats
        self.reservoir_size = reservoir
        self._rng = np.random.default_rng(seed)
        self._inputs: dict[str, _InputSketch] = {}
        for name, ref in stats.inputs.items():
            edges = [np.asarray(f.edges, dtype=np.float64) for f in ref.features]
            nbins = max(len(e) for e in edges) + 1
            self._inputs[name] = _InputSketch(
                ref, edges, np.zeros((len(edges), nbins), dtype=np.int64),
                np.empty((reservoir, len(edges)), dtype=np.float64))

    def reset(self) -> None:
        for s in self._inputs.values():
            s.counts[:] = 0
            s.seen = 0

    def update(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Add one predict call's inputs (arrays with the batch on the first axis)."""
        for name, s in self._inputs.items():
            if name not in inputs:
                continue
            m = feature_matrix(inputs[name], s.ref.mode)
            if m.shape[1] != len(s.edges):
                continue  # shape differs from the reference: not comparable
            m = m[np.all(np.isfinite(m), axis=1)]
            for j, edges in enumerate(s.edges):
                s.counts[j, : len(edges) + 1] += np.bincount(
                    bin_index(edges, m[:, j]), minlength=len(edges) + 1)
            for row in m:  # reservoir sampling (algorithm R), bounded rows
                if s.seen < self.reservoir_size:
                    s.reservoir[s.seen] = row
                else:
                    k = int(self._rng.integers(0, s.seen + 1))
                    if k < self.reservoir_size:
                        s.reservoir[k] = row
                s.seen += 1

    def rows(self, name: str) -> int:
        return self._inputs[name].seen

    def report(self, *, min_rows: int = MIN_ROWS) -> dict[str, InputDrift]:
        """Drift of every input with at least ``min_rows`` rows in this window."""
        out: dict[str, InputDrift] = {}
        for name, s in self._inputs.items():
            if s.seen < min_rows:
                continue
            live = s.reservoir[: min(s.seen, self.reservoir_size)]
            psis, stats, pvals = [], [], []
            for j, (edges, feat) in enumerate(zip(s.edges, s.ref.features, strict=True)):
                counts = s.counts[j, : len(edges) + 1]
                psis.append(psi(np.asarray(feat.proportions), counts / counts.sum()))
                d, p = ks_2samp(np.asarray(feat.sample), live[:, j])
                stats.append(d)
                pvals.append(p)
            p_adj = min(1.0, min(pvals) * len(pvals))
            worst = max(psis)
            out[name] = InputDrift(psi=worst, ks_stat=max(stats), ks_pvalue=p_adj,
                                   drifted=bool(worst > PSI_DRIFTED or p_adj < KS_ALPHA))
        return out
