"""A rollout plan: ordered stages, each a cohort share of the target with its gates.

Frozen value objects that validate themselves; ``from_dict``/``to_dict`` are the stored and
REST form (JSON in the ``rollouts.plan`` column).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
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
        unknown = set(obj) - set(asdict(d))
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
            allow_fallback=bool(obj.get("allow_fallback", d.allow_fallback)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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

    def __post_init__(self) -> None:
        if not 1 <= len(self.stages) <= 20:
            raise InvalidInputError("a plan needs 1..20 stages")
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
                   rollback_on_halt=bool(obj.get("rollback_on_halt", True)))

    def to_dict(self) -> dict[str, Any]:
        return {"stages": [s.to_dict() for s in self.stages],
                "rollback_on_halt": self.rollback_on_halt}


def default_plan() -> Plan:
    """shadow 5% -> canary 5% -> 25% -> 100%."""
    return Plan(stages=(
        Stage("shadow 5%", "shadow", 5, Gates(min_devices=1, min_samples=200)),
        Stage("canary 5%", "canary", 5, Gates(min_devices=1, min_samples=200,
                                              min_agreement=None)),
        Stage("25%", "canary", 25, Gates(min_devices=1, min_samples=500, min_agreement=None)),
        Stage("100%", "canary", 100, Gates(min_devices=1, min_samples=0, min_agreement=None)),
    ))
