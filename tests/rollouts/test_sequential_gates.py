"""The sequential gates' statistics, checked by seeded simulation (pure, no I/O).

Every rate is compared with its stated bound plus three binomial standard errors of the
simulation itself: ``rate <= alpha + 3 * sqrt(alpha * (1 - alpha) / runs)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fleet_server.rollouts.gate_sim import fixed_gate, report_counts, sequential_gate
from fleet_server.rollouts.sequential import confidence_sequence, decide, interval

RUNS = 1000
REPORT = 50  # samples per report; the gate looks after every report
ALPHA = BETA = 0.05


def _bound(rate: float, runs: int = RUNS) -> float:
    return rate + 3 * math.sqrt(rate * (1 - rate) / runs)


@pytest.mark.parametrize("p", [0.5, 0.97, 0.995])
def test_confidence_sequence_holds_the_true_rate_at_every_look(p: float) -> None:
    counts = report_counts(p, rollouts=RUNS, reports=200, report_samples=REPORT, seed=11)
    total = np.cumsum(counts, axis=1)
    n = np.arange(1, 201) * REPORT
    lower, upper = confidence_sequence(total, n, alpha_lower=ALPHA, alpha_upper=ALPHA,
                                       prior_mean=0.98, prior_strength=100)
    assert np.all(lower <= upper) and np.all((lower >= 0) & (upper <= 1))
    # time-uniform: the share of runs where the interval EVER misses p, over 200 looks
    assert (lower > p).any(axis=1).mean() <= _bound(ALPHA)
    assert (upper < p).any(axis=1).mean() <= _bound(ALPHA)
    # and it narrows: the last interval is far tighter than the first
    assert np.median(upper[:, -1] - lower[:, -1]) < np.median(upper[:, 0] - lower[:, 0]) / 4


def test_confidence_sequence_holds_for_bounded_non_bernoulli_observations() -> None:
    rng = np.random.default_rng(5)
    x = rng.beta(2.0, 8.0, size=(RUNS, 100, 20))  # values in [0, 1], mean 0.2
    total = np.cumsum(x.sum(axis=2), axis=1)
    n = np.arange(1, 101) * 20
    lower, upper = confidence_sequence(total, n, alpha_lower=ALPHA, alpha_upper=ALPHA)
    missed = ((lower > 0.2) | (upper < 0.2)).any(axis=1).mean()
    assert missed <= _bound(2 * ALPHA)


def test_peeking_at_a_fixed_sample_95_percent_interval_after_every_report_inflates_errors(
        ) -> None:
    """Why the plain interval is not enough: looked at 200 times, it misses far more often
    than 5%, where the confidence sequence above stays within its rate."""
    p = 0.97
    counts = report_counts(p, rollouts=RUNS, reports=200, report_samples=REPORT, seed=11)
    n = np.arange(1, 201) * REPORT
    est = np.cumsum(counts, axis=1) / n
    half = 1.96 * np.sqrt(est * (1 - est) / n)
    missed = ((est - half > p) | (est + half < p)).any(axis=1).mean()
    assert missed > 3 * _bound(ALPHA)


@pytest.mark.parametrize(("halt", "promote"), [(0.97, 0.99), (0.97, 0.97)])
def test_candidate_just_below_the_tolerance_is_promoted_at_most_alpha(
        halt: float, promote: float) -> None:
    counts = report_counts(0.969, rollouts=RUNS, reports=400, report_samples=REPORT, seed=21)
    out = sequential_gate(counts, report_samples=REPORT, halt=halt, promote=promote,
                          alpha=ALPHA, beta=BETA)
    assert out.pass_rate <= _bound(ALPHA)
    # today's gate (point estimate >= 0.97 after 200 samples) promotes it about half the time
    old = fixed_gate(counts, report_samples=REPORT, min_samples=200, threshold=halt)
    assert old.pass_rate > 0.3


@pytest.mark.parametrize(("halt", "promote", "p"), [(0.97, 0.99, 0.99), (0.97, 0.97, 0.97)])
def test_good_candidate_on_the_promote_line_is_halted_at_most_beta(
        halt: float, promote: float, p: float) -> None:
    counts = report_counts(p, rollouts=RUNS, reports=400, report_samples=REPORT, seed=31)
    out = sequential_gate(counts, report_samples=REPORT, halt=halt, promote=promote,
                          alpha=ALPHA, beta=BETA)
    assert out.halt_rate <= _bound(BETA)


def test_clear_candidates_decide_correctly_and_the_median_samples_are_recorded() -> None:
    """A clearly bad (95%) and a clearly good (99.9%) candidate: both decided the right way
    in nearly every run, in a median number of samples printed beside today's gate."""
    rows = []
    for p, want in ((0.95, "halt"), (0.999, "pass")):
        counts = report_counts(p, rollouts=RUNS, reports=400, report_samples=REPORT, seed=41)
        seq = sequential_gate(counts, report_samples=REPORT, halt=0.97, promote=0.99,
                              alpha=ALPHA, beta=BETA)
        old = fixed_gate(counts, report_samples=REPORT, min_samples=200, threshold=0.97)
        right = seq.pass_rate if want == "pass" else seq.halt_rate
        assert right >= 1 - _bound(ALPHA)
        assert seq.undecided_rate <= _bound(ALPHA)
        rows.append((p, seq.median_samples, old.median_samples))
    print("p, sequential median samples, fixed gate samples:", rows)
    assert all(seq_n > 0 for _, seq_n, _ in rows)


def test_error_rate_gate_is_lower_is_better() -> None:
    counts = report_counts(0.03, rollouts=RUNS, reports=200, report_samples=REPORT, seed=51)
    out = sequential_gate(counts, report_samples=REPORT, halt=0.02, promote=0.01,
                          alpha=ALPHA, beta=BETA, higher_is_better=False)
    assert out.halt_rate >= 1 - _bound(ALPHA) and out.pass_rate <= _bound(ALPHA)


def test_one_interval_decides_continue_then_halt_as_samples_grow() -> None:
    few = interval(24, 25, higher_is_better=True, promote=0.99, halt=0.97, alpha=0.05,
                   beta=0.05, prior_strength=100)
    many = interval(4800, 5000, higher_is_better=True, promote=0.99, halt=0.97, alpha=0.05,
                    beta=0.05, prior_strength=100)
    assert few.decision == "continue" and few.lower < 0.96 < few.upper
    assert many.decision == "halt" and many.upper < 0.97 and many.estimate == 0.96
    assert many.upper - many.lower < few.upper - few.lower
    assert decide(0.991, 0.999, higher_is_better=True, promote=0.99, halt=0.97) == "pass"
    assert decide(0.021, 0.05, higher_is_better=False, promote=0.01, halt=0.02) == "halt"


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="alpha_lower"):
        confidence_sequence(1, 2, alpha_lower=0, alpha_upper=0.05)
    with pytest.raises(ValueError, match="total <= n"):
        confidence_sequence(3, 2, alpha_lower=0.05, alpha_upper=0.05)
