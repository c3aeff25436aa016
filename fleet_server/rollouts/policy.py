"""Gate evaluation and cohort choice: pure functions over values (no I/O, no clock).

``evaluate(stage, metrics, elapsed_s)`` says whether a stage passes, fails or must wait, and
returns every gate with its threshold and the measured value, so the decision can be
recorded with the numbers that caused it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from fleet_server.rollouts.plan import CONTROL_PRIOR_MEANS, Sequential, Stage
from fleet_server.rollouts.sequential import difference, interval

OUTCOMES = ("wait", "pass", "fail")


@dataclass(frozen=True)
class StageMetrics:
    """What the cohort of one stage measured since the stage began."""

    cohort: int
    reporting: int
    """Cohort devices with at least one report counted towards the gates."""
    excluded: int
    samples: int
    agreement: float | None = None
    latency_ratio: float | None = None
    error_rate: float | None = None
    installs_done: int = 0
    installs_failed: int = 0
    fallback_devices: int = 0
    control_reporting: int = 0
    """Control-group devices with telemetry in the stage (canary stages with a control)."""
    pace_asked: float | None = None
    """Shadow stages: samples per minute the server asks of each device (``pace``)."""
    pace_achieved: float | None = None
    """Shadow stages: samples per minute per device in the reports (samples / window)."""
    sequential: dict[str, list[float]] = field(default_factory=dict)
    """metric -> [sum, count] of its observations on [0, 1], for the confidence sequences."""

    def __post_init__(self) -> None:
        for name in ("cohort", "reporting", "excluded", "samples", "installs_done",
                     "installs_failed", "fallback_devices"):
            if getattr(self, name) < 0:
                raise ValueError(f"StageMetrics.{name} must be >= 0")

    @property
    def install_failure_rate(self) -> float | None:
        finished = self.installs_done + self.installs_failed
        return None if finished == 0 else self.installs_failed / finished

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "install_failure_rate": self.install_failure_rate}


@dataclass(frozen=True)
class GateResult:
    name: str
    op: str
    threshold: float | None
    measured: float | None
    ok: bool | None
    """None: not measured (yet); for a sequential gate, not decided yet."""
    lower: float | None = None
    """Sequential gates: the confidence interval, its sample count, the halt line
    (``threshold`` is the promote line) and the decision (pass, halt, continue)."""
    upper: float | None = None
    n: float | None = None
    halt: float | None = None
    decision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Evaluation:
    outcome: str
    reason: str
    gates: tuple[GateResult, ...]
    metrics: StageMetrics

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}")

    @property
    def failing(self) -> tuple[GateResult, ...]:
        return tuple(g for g in self.gates if g.ok is False)

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "reason": self.reason,
                "gates": [g.to_dict() for g in self.gates], "metrics": self.metrics.to_dict()}


def _gate(name: str, op: str, threshold: float | None, measured: float | None) -> GateResult:
    if threshold is None or measured is None:
        return GateResult(name, op, threshold, measured, None)
    ok = measured >= threshold if op == ">=" else measured <= threshold
    return GateResult(name, op, threshold, measured, ok)


def _sequential_gate(seq: Sequential, metric: str, m: StageMetrics) -> GateResult:
    gate = next(g for g in seq.gates if g.metric == metric)
    if metric in CONTROL_PRIOR_MEANS:  # [canary sum, canary n, control sum, control n]
        a, n_a, b, n_b = m.sequential.get(metric, [0.0, 0.0, 0.0, 0.0])
        iv = difference(a, n_a, b, n_b, promote=gate.promote, halt=gate.halt,
                        alpha=seq.alpha, beta=seq.beta, prior_strength=seq.prior_strength,
                        prior_mean=CONTROL_PRIOR_MEANS[metric], scale=gate.scale)
        n = iv.n
    else:
        total, n = m.sequential.get(metric, [0.0, 0.0])
        iv = interval(total, n, higher_is_better=gate.higher_is_better, promote=gate.promote,
                      halt=gate.halt, alpha=seq.alpha, beta=seq.beta,
                      prior_strength=seq.prior_strength, scale=gate.scale)
    name = GATE_NAMES[metric]
    return GateResult(name, ">" if gate.higher_is_better else "<", gate.promote, iv.estimate,
                      {"pass": True, "halt": False}.get(iv.decision), lower=iv.lower,
                      upper=iv.upper, n=n, halt=gate.halt, decision=iv.decision)


GATE_NAMES = {"agreement": "agreement", "latency_ratio": "latency_ratio_p95",
              "error_rate": "error_rate", "drift": "drift",
              "error_rate_vs_control": "error_rate_vs_control",
              "latency_ratio_vs_control": "latency_ratio_p95_vs_control"}
"""Sequential metric -> the name of its gate in an evaluation."""


def gate_results(stage: Stage, m: StageMetrics) -> tuple[GateResult, ...]:
    g = stage.gates
    seq = g.sequential
    judged = {x.metric for x in seq.gates} if seq else set()
    results = [
        _gate("min_devices", ">=", g.min_devices, m.reporting),
        _gate("min_samples", ">=", g.min_samples, m.samples),
    ]
    fixed = [("agreement", ">=", g.min_agreement, m.agreement)] if stage.kind == "shadow" else []
    fixed += [("latency_ratio", "<=", g.max_latency_ratio, m.latency_ratio),
              ("error_rate", "<=", g.max_error_rate, m.error_rate)]
    for metric, op, threshold, measured in fixed:
        if metric not in judged:
            results.append(_gate(GATE_NAMES[metric], op, threshold, measured))
    if seq:
        results += [_sequential_gate(seq, x.metric, m) for x in seq.gates]
    if stage.kind == "canary":
        results.append(_gate("install_failure_rate", "<=", g.max_install_failure_rate,
                             m.install_failure_rate))
    results.append(_gate("fallback_devices", "<=", None if g.allow_fallback else 0.0,
                         float(m.fallback_devices)))
    return tuple(results)


HARD_GATES = ("install_failure_rate", "fallback_devices")
"""Gates that fail a stage as soon as they are measured, before the minimums are met."""


def evaluate(stage: Stage, metrics: StageMetrics, elapsed_s: float) -> Evaluation:
    """Pass when the minimums are met and no gate fails; fail on a failing gate once the
    minimums are met (or at once for a hard gate), or when the deadline passes short of the
    minimums; otherwise wait."""
    gates = gate_results(stage, metrics)
    by_name = {g.name: g for g in gates}
    # a sequential halt is valid at any sample size, so it acts at once like a hard gate
    hard = [g for g in gates if (g.name in HARD_GATES or g.decision) and g.ok is False]
    if hard:
        return Evaluation("fail", _why(hard), gates, metrics)
    enough = by_name["min_devices"].ok and by_name["min_samples"].ok
    undecided = [g for g in gates if g.decision == "continue"]
    if enough:
        failing = [g for g in gates if g.ok is False]
        if failing:
            return Evaluation("fail", _why(failing), gates, metrics)
        if undecided and elapsed_s >= stage.deadline_s:
            return Evaluation("fail", "deadline passed undecided: " + _why(undecided),
                              gates, metrics)
        if undecided:
            return Evaluation("wait", "not enough samples yet: " + _why(undecided),
                              gates, metrics)
        if stage.kind == "shadow" and stage.gates.min_agreement is not None \
                and metrics.agreement is None:
            return Evaluation("wait", "no shadow agreement measured yet", gates, metrics)
        return Evaluation("pass", "all gates met", gates, metrics)
    if elapsed_s >= stage.deadline_s:
        short = [g for g in gates if g.name in ("min_devices", "min_samples") and not g.ok]
        return Evaluation("fail", "deadline passed: " + _why(short), gates, metrics)
    return Evaluation("wait", "collecting: " + _why(
        [g for g in gates if g.name in ("min_devices", "min_samples") and not g.ok]),
        gates, metrics)


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}"


def _why(gates: Iterable[GateResult]) -> str:
    return "; ".join(_explain(g) for g in gates)


def _explain(g: GateResult) -> str:
    if g.decision is None:
        return f"{g.name} {_fmt(g.measured)} (needs {g.op} {_fmt(g.threshold)})"
    bounds = f"{g.name} {_fmt(g.measured)} in [{_fmt(g.lower)}, {_fmt(g.upper)}] " \
             f"after {_fmt(g.n)} samples"
    if g.decision == "halt":
        return f"{bounds} (entirely {'below' if g.op == '>' else 'above'} the halt line " \
               f"{_fmt(g.halt)})"
    return f"{bounds} (promote needs the interval {g.op} {_fmt(g.threshold)}, " \
           f"halt {'<' if g.op == '>' else '>'} {_fmt(g.halt)})"


def cohort_order(device_ids: Iterable[str], rollout_id: str) -> list[str]:
    """A stable pseudo-random order of the target: stage k takes a prefix of it."""
    return sorted(device_ids, key=lambda d: hashlib.sha256(
        f"{rollout_id}:{d}".encode()).hexdigest())


def control_devices(device_ids: Iterable[str], rollout_id: str, percent: float) -> set[str]:
    """The control group: each device independently, by ``sha256(control:rollout:device)``
    read as a number in [0, 1) below ``percent`` %. Deterministic, and independent of the
    cohort order (another hash), so the control is spread over every stage's share."""
    if percent <= 0:
        return set()
    return {d for d in device_ids if int.from_bytes(hashlib.sha256(
        f"control:{rollout_id}:{d}".encode()).digest()[:8], "big") / 2**64 < percent / 100}


def cohort_size(total: int, percent: float) -> int:
    """``ceil(percent% of total)``, at least 1 when the target is not empty."""
    if total <= 0:
        return 0
    return max(1, min(total, math.ceil(total * percent / 100.0 - 1e-9)))
