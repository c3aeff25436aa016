"""Seeded simulations of one gate over many rollouts: the sequential gate and the older
fixed-sample gate on the same simulated reports. Pure numpy; used by the tests that check
the stated error rates and by ``python -m bench.gates``.

A simulated rollout is a stream of reports, each of ``report_samples`` Bernoulli samples
(an agreement, or an error) with true rate ``p``; the gate looks after every report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
from numpy.typing import NDArray

from fleet_server.rollouts.sequential import confidence_sequence


@dataclass(frozen=True)
class Outcomes:
    """What the gate did in each simulated rollout."""

    passed: NDArray[np.bool_]
    halted: NDArray[np.bool_]
    """Halted by the gate (not counting the deadline)."""
    undecided: NDArray[np.bool_]
    """Still undecided when the reports ran out: the stage deadline halts these."""
    samples: NDArray[np.float64]
    """Samples seen when the gate decided (the cap when it did not)."""

    @property
    def pass_rate(self) -> float:
        return float(self.passed.mean())

    @property
    def halt_rate(self) -> float:
        return float(self.halted.mean())

    @property
    def undecided_rate(self) -> float:
        return float(self.undecided.mean())

    @property
    def median_samples(self) -> float:
        return float(np.median(self.samples))


def report_counts(p: float, *, rollouts: int, reports: int, report_samples: int,
                  seed: int) -> NDArray[np.int64]:
    """Successes per report, ``rollouts x reports`` (the same seed gives the same fleet)."""
    rng = np.random.default_rng(seed)
    return rng.binomial(report_samples, p, size=(rollouts, reports))


def sequential_gate(counts: NDArray[np.int64], *, report_samples: int, halt: float,
                    promote: float, alpha: float, beta: float, prior_strength: float = 100.0,
                    higher_is_better: bool = True) -> Outcomes:
    """Decide after every report with the confidence sequence."""
    total = np.cumsum(counts, axis=1, dtype=np.float64)
    n = np.arange(1, counts.shape[1] + 1, dtype=np.float64) * report_samples
    mean = min(max((halt + promote) / 2, 0.01), 0.99)
    a_low, a_up = (alpha, beta) if higher_is_better else (beta, alpha)
    lower, upper = confidence_sequence(total, n, alpha_lower=a_low, alpha_upper=a_up,
                                       prior_mean=mean, prior_strength=prior_strength)
    if higher_is_better:
        passes, halts = lower > promote, upper < halt
    else:
        passes, halts = upper < promote, lower > halt
    decided = passes | halts
    # one flag per row: any() over axis 1 of a 2-D array is an array, never a scalar
    any_decided = cast(NDArray[np.bool_], decided.any(axis=1))
    first = np.where(any_decided, decided.argmax(axis=1), counts.shape[1] - 1)
    rows = np.arange(counts.shape[0])
    passed = any_decided & passes[rows, first]
    return Outcomes(passed=passed, halted=any_decided & ~passed, undecided=~any_decided,
                    samples=n[first])


def fixed_gate(counts: NDArray[np.int64], *, report_samples: int, min_samples: int,
               threshold: float, higher_is_better: bool = True) -> Outcomes:
    """The older gate: wait for ``min_samples``, then compare the point estimate with the
    threshold once."""
    k = max(1, -(-min_samples // report_samples))
    if k > counts.shape[1]:
        raise ValueError("not enough reports for min_samples")
    estimate = counts[:, :k].sum(axis=1) / (k * report_samples)
    passed = estimate >= threshold if higher_is_better else estimate <= threshold
    return Outcomes(passed=passed, halted=~passed, undecided=np.zeros_like(passed),
                    samples=np.full(counts.shape[0], float(k * report_samples)))


def difference_gate(canary: NDArray[np.int64], control: NDArray[np.int64], *,
                    report_samples: int, halt: float, promote: float, alpha: float,
                    beta: float, prior_mean: float, prior_strength: float = 100.0) -> Outcomes:
    """The two-sample gate (canary minus control, lower is better) after every report of
    ``report_samples`` per arm; ``canary`` and ``control`` count the events (errors)."""
    n = np.arange(1, canary.shape[1] + 1, dtype=np.float64) * report_samples
    kw = {"prior_mean": prior_mean, "prior_strength": prior_strength}
    lo_a, hi_a = confidence_sequence(np.cumsum(canary, axis=1), n, alpha_lower=beta / 2,
                                     alpha_upper=alpha / 2, **kw)
    lo_b, hi_b = confidence_sequence(np.cumsum(control, axis=1), n, alpha_lower=alpha / 2,
                                     alpha_upper=beta / 2, **kw)
    passes, halts = hi_a - lo_b < promote, lo_a - hi_b > halt
    decided = passes | halts
    # one flag per row: any() over axis 1 of a 2-D array is an array, never a scalar
    any_decided = cast(NDArray[np.bool_], decided.any(axis=1))
    first = np.where(any_decided, decided.argmax(axis=1), canary.shape[1] - 1)
    passed = any_decided & passes[np.arange(canary.shape[0]), first]
    return Outcomes(passed=passed, halted=any_decided & ~passed, undecided=~any_decided,
                    samples=n[first])
