"""A rollout plan: ordered stages, each a cohort share of the target with its gates.

Frozen value objects that validate themselves; ``from_dict``/``to_dict`` are the stored and
REST form (JSON in the ``rollouts.plan`` column).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from fleet_server.errors import InvalidInputError

STAGE_KINDS = ("shadow", "canary")
"""``shadow``: the candidate runs beside the active bundle; ``canary``: it is installed."""


def _num(obj: dict[str, Any], key: str, default: float | None, what: str) -> float | None:
    value = obj.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInputError(f"{what}.{key} must be a number, got {value!r}")
    return float(value)


SEQUENTIAL_METRICS: dict[str, tuple[bool, float, tuple[str, ...]]] = {
    "agreement": (True, 1.0, ("shadow",)),
    "error_rate": (False, 1.0, ("shadow", "canary")),
    "latency_ratio": (False, 4.0, ("shadow", "canary")),
    "drift": (False, 1.0, ("shadow",)),
    "error_rate_vs_control": (False, 1.0, ("canary",)),
    "latency_ratio_vs_control": (False, 4.0, ("canary",)),
}
"""metric -> (higher is better, largest value measured (ratios are clipped there), stage
kinds that measure it)."""

CONTROL_PRIOR_MEANS = {"error_rate_vs_control": 0.02, "latency_ratio_vs_control": 0.25}
"""Two-sample gates (canary minus control): their lines are differences, within
(-largest, largest), and their fixed prior mean on [0, 1]."""


@dataclass(frozen=True)
class SequentialGate:
    """One metric judged by a confidence sequence: ``promote`` and ``halt`` lines, in the
    metric's unit. Higher-is-better metrics are written ``{"halt_below", "promote_above"}``,
    the others ``{"halt_above", "promote_below"}``."""

    metric: str
    halt: float
    promote: float

    @property
    def higher_is_better(self) -> bool:
        return SEQUENTIAL_METRICS[self.metric][0]

    @property
    def scale(self) -> float:
        return SEQUENTIAL_METRICS[self.metric][1]

    @classmethod
    def from_dict(cls, metric: str, obj: Any, what: str) -> SequentialGate:
        if metric not in SEQUENTIAL_METRICS:
            raise InvalidInputError(f"{what}: unknown gate {metric!r}, expected one of "
                                    f"{sorted(SEQUENTIAL_METRICS)}")
        higher, scale, _ = SEQUENTIAL_METRICS[metric]
        keys = ("halt_below", "promote_above") if higher else ("halt_above", "promote_below")
        where = f"{what}.{metric}"
        if not isinstance(obj, dict) or set(obj) != set(keys):
            raise InvalidInputError(f"{where} must be an object with exactly {list(keys)}")
        halt, promote = (_num(obj, k, None, where) for k in keys)
        if halt is None or promote is None:  # _num with no default returns a number
            raise RuntimeError(f"{where}: halt and promote were not read")
        low = -scale if metric in CONTROL_PRIOR_MEANS else 0.0
        for key, value in zip(keys, (halt, promote), strict=True):
            if not low < value < scale:
                raise InvalidInputError(f"{where}.{key} must be within ({low:g}, {scale:g}), "
                                        f"got {value:g}")
        if (promote < halt) if higher else (promote > halt):
            raise InvalidInputError(
                f"{where}: {keys[1]} ({promote:g}) must be "
                f"{'>=' if higher else '<='} {keys[0]} ({halt:g})")
        return cls(metric, halt, promote)

    def to_dict(self) -> dict[str, float]:
        if self.higher_is_better:
            return {"halt_below": self.halt, "promote_above": self.promote}
        return {"halt_above": self.halt, "promote_below": self.promote}


@dataclass(frozen=True)
class Sequential:
    """The stage's sequential gates and their stated error rates: ``alpha`` = chance of
    promoting a candidate on the halt side of a line, ``beta`` = chance of halting one on the
    promote side. ``prior_strength`` tunes where the interval is tightest (any value is
    valid)."""

    gates: tuple[SequentialGate, ...]
    alpha: float = 0.05
    beta: float = 0.05
    prior_strength: float = 100.0

    @classmethod
    def from_dict(cls, obj: Any, what: str) -> Sequential:
        if not isinstance(obj, dict):
            raise InvalidInputError(f"{what} must be an object")
        settings = {k: obj[k] for k in ("alpha", "beta", "prior_strength") if k in obj}
        gates = tuple(SequentialGate.from_dict(k, v, what) for k, v in obj.items()
                      if k not in settings)
        if not gates:
            raise InvalidInputError(f"{what} needs at least one of {sorted(SEQUENTIAL_METRICS)}")
        alpha = _num(obj, "alpha", 0.05, what)
        beta = _num(obj, "beta", 0.05, what)
        strength = _num(obj, "prior_strength", 100.0, what)
        if alpha is None or beta is None or strength is None:  # defaults are numbers
            raise RuntimeError(f"{what}: alpha, beta or prior_strength were not read")
        for key, value in (("alpha", alpha), ("beta", beta)):
            if not 0 < value <= 0.5:
                raise InvalidInputError(f"{what}.{key} must be within (0, 0.5], got {value:g}")
        if not 0 < strength <= 1e6:
            raise InvalidInputError(f"{what}.prior_strength must be within (0, 1e6]")
        return cls(gates, alpha, beta, strength)

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta, "prior_strength": self.prior_strength,
                **{g.metric: g.to_dict() for g in self.gates}}


@dataclass(frozen=True)
class Gates:
    """Thresholds one stage must meet; ``None`` switches a gate off."""

    min_devices: int = 1
    min_samples: int = 100
    min_agreement: float | None = 0.95
    max_latency_ratio: float | None = 1.5
    max_error_rate: float | None = 0.01
    max_install_failure_rate: float | None = 0.0
    allow_fallback: bool = False
    sequential: Sequential | None = None
    """Metrics judged by a confidence sequence; their fixed threshold above is not used."""

    def __post_init__(self) -> None:
        if self.min_devices < 1 or self.min_samples < 0:
            raise InvalidInputError("gates: min_devices must be >= 1 and min_samples >= 0")
        for name in ("min_agreement", "max_error_rate", "max_install_failure_rate"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise InvalidInputError(f"gates.{name} must be within 0..1, got {value}")
        if self.max_latency_ratio is not None and self.max_latency_ratio <= 0:
            raise InvalidInputError("gates.max_latency_ratio must be positive")

    @classmethod
    def from_dict(cls, obj: dict[str, Any], what: str = "gates") -> Gates:
        if not isinstance(obj, dict):
            raise InvalidInputError(f"{what} must be an object")
        d = cls()
        unknown = set(obj) - {f.name for f in fields(d)}
        if unknown:
            raise InvalidInputError(f"{what}: unknown keys {sorted(unknown)}")
        min_devices = _num(obj, "min_devices", d.min_devices, what)
        min_samples = _num(obj, "min_samples", d.min_samples, what)
        return cls(
            min_devices=int(min_devices or 1), min_samples=int(min_samples or 0),
            min_agreement=_num(obj, "min_agreement", d.min_agreement, what),
            max_latency_ratio=_num(obj, "max_latency_ratio", d.max_latency_ratio, what),
            max_error_rate=_num(obj, "max_error_rate", d.max_error_rate, what),
            max_install_failure_rate=_num(obj, "max_install_failure_rate",
                                          d.max_install_failure_rate, what),
            allow_fallback=bool(obj.get("allow_fallback", d.allow_fallback)),
            sequential=(None if obj.get("sequential") is None else
                        Sequential.from_dict(obj["sequential"], f"{what}.sequential")))

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.sequential is None:
            del out["sequential"]
        else:
            out["sequential"] = self.sequential.to_dict()
        return out


@dataclass(frozen=True)
class Stage:
    """``percent`` is cumulative: stage k covers the first ``percent`` % of the target order."""

    name: str
    kind: str
    percent: float
    gates: Gates = field(default_factory=Gates)
    deadline_s: float = 600.0
    """After this long a cohort device that has not reported is excluded (see docs)."""
    shadow_sample_rate: float = 1.0

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 64:
            raise InvalidInputError("stage name must be 1..64 characters")
        if self.kind not in STAGE_KINDS:
            raise InvalidInputError(f"stage kind must be one of {STAGE_KINDS}, got {self.kind!r}")
        if not 0 < self.percent <= 100:
            raise InvalidInputError(f"stage percent must be within (0, 100], got {self.percent}")
        if self.deadline_s <= 0:
            raise InvalidInputError("stage deadline_s must be positive")
        if not 0 < self.shadow_sample_rate <= 1:
            raise InvalidInputError("stage shadow_sample_rate must be within (0, 1]")
        for g in self.gates.sequential.gates if self.gates.sequential else ():
            if self.kind not in SEQUENTIAL_METRICS[g.metric][2]:
                raise InvalidInputError(
                    f"stage {self.name!r}: the sequential {g.metric} gate needs a stage of kind "
                    f"{' or '.join(SEQUENTIAL_METRICS[g.metric][2])}, not {self.kind}")

    @classmethod
    def from_dict(cls, obj: dict[str, Any], index: int = 0) -> Stage:
        what = f"stages[{index}]"
        if not isinstance(obj, dict):
            raise InvalidInputError(f"{what} must be an object")
        kind = obj.get("kind", "canary")
        percent = _num(obj, "percent", None, what)
        if percent is None:
            raise InvalidInputError(f"{what}.percent is required")
        return cls(
            name=str(obj.get("name") or f"{kind} {percent:g}%"), kind=str(kind),
            percent=percent, gates=Gates.from_dict(obj.get("gates") or {}, f"{what}.gates"),
            deadline_s=_num(obj, "deadline_s", 600.0, what) or 600.0,
            shadow_sample_rate=_num(obj, "shadow_sample_rate", 1.0, what) or 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "percent": self.percent,
                "gates": self.gates.to_dict(), "deadline_s": self.deadline_s,
                "shadow_sample_rate": self.shadow_sample_rate}


@dataclass(frozen=True)
class Plan:
    stages: tuple[Stage, ...]
    rollback_on_halt: bool = True
    control_percent: float = 0.0
    """Share of the target kept on its current bundle until the last stage (the control
    group); chosen per device by ``policy.control_devices``."""

    def __post_init__(self) -> None:
        if not 1 <= len(self.stages) <= 20:
            raise InvalidInputError("a plan needs 1..20 stages")
        if not 0 <= self.control_percent <= 50:
            raise InvalidInputError(
                f"control_percent must be within [0, 50], got {self.control_percent:g}")
        for i, stage in enumerate(self.stages):
            seq = stage.gates.sequential
            uses = [g.metric for g in seq.gates if g.metric in CONTROL_PRIOR_MEANS] if seq else []
            if uses and (self.control_percent == 0 or i == len(self.stages) - 1):
                raise InvalidInputError(
                    f"stages[{i}]: {uses[0]} needs a control group: set control_percent > 0 "
                    f"and use it before the last stage (which installs on every device)")
        last = 0.0
        for i, stage in enumerate(self.stages):
            if stage.percent < last:
                raise InvalidInputError(f"stages[{i}].percent must not decrease")
            last = stage.percent
        if self.stages[-1].kind != "canary":
            raise InvalidInputError("the last stage must install the bundle (kind canary)")

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Plan:
        if not isinstance(obj, dict) or not isinstance(obj.get("stages"), list):
            raise InvalidInputError("plan must be an object with a 'stages' list")
        return cls(stages=tuple(Stage.from_dict(s, i) for i, s in enumerate(obj["stages"])),
                   rollback_on_halt=bool(obj.get("rollback_on_halt", True)),
                   control_percent=_num(obj, "control_percent", 0.0, "plan") or 0.0)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stages": [s.to_dict() for s in self.stages],
                               "rollback_on_halt": self.rollback_on_halt}
        if self.control_percent:
            out["control_percent"] = self.control_percent
        return out


def default_plan() -> Plan:
    """shadow 5% -> canary 5% -> 25% -> 100%."""
    return Plan(stages=(
        Stage("shadow 5%", "shadow", 5, Gates(min_devices=1, min_samples=200)),
        Stage("canary 5%", "canary", 5, Gates(min_devices=1, min_samples=200,
                                              min_agreement=None)),
        Stage("25%", "canary", 25, Gates(min_devices=1, min_samples=500, min_agreement=None)),
        Stage("100%", "canary", 100, Gates(min_devices=1, min_samples=0, min_agreement=None)),
    ))
