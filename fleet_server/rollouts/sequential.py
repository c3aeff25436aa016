"""Always-valid confidence sequences for a mean in [0, 1], and the gate decision they give.

Pure numpy, no I/O. The boundary is the conjugate (beta-binomial) mixture of
Howard, Ramdas, McAuliffe and Sekhon (2021), "Time-uniform, nonparametric, nonasymptotic
confidence sequences", Annals of Statistics 49(2), section 3 (Robbins' method of mixtures).

For observations ``x_1, x_2, ...`` in [0, 1] with common mean ``p``, and ``S = sum(x)``,
``F = n - S`` after ``n`` of them,

    M_n(p) = B(a + S, b + F) / B(a, b) / (p**S * (1 - p)**F)

is a nonnegative supermartingale under ``p`` (for Bernoulli data it is the likelihood ratio
of a Beta(a, b) mixture against ``p``; for other [0, 1] data the Bernoulli bound dominates by
convexity, Hoeffding 1963). By Ville's inequality ``P(sup_n M_n(p) >= 1/alpha) <= alpha``,
so ``{p : M_n(p) < 1/alpha}`` holds ``p`` at every ``n`` at once with probability at least
``1 - alpha``: it may be looked at after every report, as often as one likes, without
inflating the error. The set is an interval around ``S / n`` (``log M`` is convex in
``p``); its ends are found by bisection, vectorised over arrays so that simulations of
thousands of rollouts stay fast.

The two ends are used with their own error rates: each end alone is wrong with probability
at most its ``alpha`` (the event ``sup M >= 1/alpha`` covers both sides).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fleet_server.rollouts.special import betaln, xlog1py, xlogy

DECISIONS = ("pass", "halt", "continue")
_ITERATIONS = 30


def _bound(s: NDArray[np.float64], f: NDArray[np.float64], centre: NDArray[np.float64],
           edge: float, log_beta: NDArray[np.float64], level: float) -> NDArray[np.float64]:
    """The point between ``centre`` and ``edge`` where ``log M`` crosses ``level``;
    ``edge`` where it never does. Returns the outer side of the crossing (conservative).
    ``log M(p) = log_beta - S log p - F log(1 - p)``."""
    inside = centre.copy()
    outside = np.full_like(centre, edge)
    at_edge = log_beta - xlogy(s, edge) - xlog1py(f, -edge)
    never = ~(at_edge >= level)  # nan (0 * log 0 at the edge) counts as never crossing
    with np.errstate(divide="ignore", invalid="ignore"):  # centre == edge: handled below
        for _ in range(_ITERATIONS):
            mid = (inside + outside) / 2
            excluded = log_beta - s * np.log(mid) - f * np.log1p(-mid) >= level
            outside = np.where(excluded, mid, outside)
            inside = np.where(excluded, inside, mid)
    return np.where(never | (centre == edge), edge, outside)


def confidence_sequence(total: ArrayLike, n: ArrayLike, *, alpha_lower: float,
                        alpha_upper: float, prior_mean: float = 0.5,
                        prior_strength: float = 2.0,
                        ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Lower and upper ends of the confidence sequence for the mean after ``n``
    observations summing to ``total`` (arrays broadcast). The lower end is wrong (above the
    mean at some ``n``) with probability at most ``alpha_lower``, the upper end likewise with
    ``alpha_upper``. The prior (``Beta(prior_mean * k, (1 - prior_mean) * k)``, ``k =
    prior_strength``) only moves where the sequence is tightest; any fixed prior is valid."""
    for name, value in (("alpha_lower", alpha_lower), ("alpha_upper", alpha_upper)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must be within (0, 1), got {value}")
    if not 0 < prior_mean < 1 or prior_strength <= 0:
        raise ValueError("prior_mean must be within (0, 1) and prior_strength positive")
    s = np.asarray(total, dtype=np.float64)
    nn = np.asarray(n, dtype=np.float64)
    s, nn = np.broadcast_arrays(s, nn)
    if np.any(nn < 0) or np.any(s < 0) or np.any(s > nn + 1e-9):
        raise ValueError("need 0 <= total <= n")
    s = np.minimum(s, nn)
    f = nn - s
    a, b = prior_mean * prior_strength, (1 - prior_mean) * prior_strength
    centre = np.where(nn > 0, s / np.where(nn > 0, nn, 1.0), 0.5)
    log_beta = betaln(a + s, b + f) - betaln(a, b)
    lower = _bound(s, f, centre, 0.0, log_beta, float(np.log(1 / alpha_lower)))
    upper = _bound(s, f, centre, 1.0, log_beta, float(np.log(1 / alpha_upper)))
    empty = nn <= 0
    return np.where(empty, 0.0, lower), np.where(empty, 1.0, upper)


@dataclass(frozen=True)
class Interval:
    """One gate's confidence interval at one moment, and what it decides."""

    n: float
    estimate: float | None
    lower: float
    upper: float
    decision: str


def decide(lower: float, upper: float, *, higher_is_better: bool, promote: float,
           halt: float) -> str:
    """``pass`` when the interval clears the promote line, ``halt`` when it is entirely on
    the wrong side of the halt line, else ``continue`` (not enough samples yet).

    Higher is better (agreement): pass when ``lower > promote``, halt when ``upper < halt``.
    Lower is better (error rate, latency, drift): pass when ``upper < promote``, halt when
    ``lower > halt``."""
    if higher_is_better:
        if lower > promote:
            return "pass"
        return "halt" if upper < halt else "continue"
    if upper < promote:
        return "pass"
    return "halt" if lower > halt else "continue"


def interval(total: float, n: float, *, higher_is_better: bool, promote: float, halt: float,
             alpha: float, beta: float, prior_strength: float, scale: float = 1.0) -> Interval:
    """The interval and decision of one gate. ``alpha`` bounds the chance of promoting a
    candidate on the halt side; ``beta`` the chance of halting one on the promote side.
    ``scale`` maps the [0, 1] observations back to the gate's unit (latency ratio)."""
    p_promote, p_halt = promote / scale, halt / scale
    mean = min(max((p_promote + p_halt) / 2, 0.01), 0.99)
    # the end that promotes carries alpha; the end that halts carries beta
    a_low, a_up = (alpha, beta) if higher_is_better else (beta, alpha)
    lo, hi = confidence_sequence(total, n, alpha_lower=a_low, alpha_upper=a_up,
                                 prior_mean=mean, prior_strength=prior_strength)
    lower, upper = float(lo) * scale, float(hi) * scale
    return Interval(n=n, estimate=(total / n * scale) if n > 0 else None, lower=lower,
                    upper=upper, decision=decide(lower, upper,
                                                 higher_is_better=higher_is_better,
                                                 promote=promote, halt=halt))


def difference(total_a: float, n_a: float, total_b: float, n_b: float, *, promote: float,
               halt: float, alpha: float, beta: float, prior_strength: float,
               prior_mean: float, scale: float = 1.0) -> Interval:
    """Two-sample comparison (``a`` minus ``b``, lower is better, e.g. canary minus control
    error rate): each mean gets its own confidence sequence with half of each error rate, so
    by the union bound ``[lower_a - upper_b, upper_a - lower_b]`` holds the difference at
    every sample size with the stated rates. Pass when the difference's upper end is below
    ``promote`` (a mistake there costs ``alpha``); halt when its lower end is above ``halt``
    (``beta``). ``prior_mean`` must be fixed in advance (not taken from the data)."""
    kw = {"prior_mean": prior_mean, "prior_strength": prior_strength}
    lo_a, hi_a = confidence_sequence(total_a, n_a, alpha_lower=beta / 2,
                                     alpha_upper=alpha / 2, **kw)
    lo_b, hi_b = confidence_sequence(total_b, n_b, alpha_lower=alpha / 2,
                                     alpha_upper=beta / 2, **kw)
    upper = (float(hi_a) - float(lo_b)) * scale
    lower = (float(lo_a) - float(hi_b)) * scale
    estimate = ((total_a / n_a - total_b / n_b) * scale) if n_a > 0 and n_b > 0 else None
    return Interval(n=min(n_a, n_b), estimate=estimate, lower=lower, upper=upper,
                    decision=decide(lower, upper, higher_is_better=False, promote=promote,
                                    halt=halt))
