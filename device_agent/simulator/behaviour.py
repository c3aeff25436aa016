"""How a simulated device behaves when it runs a given bundle (active or in shadow)."""

from __future__ import annotations

from dataclasses import dataclass


class BehaviourError(ValueError):
    """A behaviour spec does not parse."""


@dataclass(frozen=True)
class Behaviour:
    """``disagree``: share of inputs where the candidate's top-1 differs from the active one;
    ``slow``: latency multiplier; ``error_rate``: share of failing inferences;
    ``fail_install``: installing it fails at verification; ``fallback``: the requested
    accelerator silently fell back to CPU."""

    disagree: float = 0.0
    slow: float = 1.0
    error_rate: float = 0.0
    fail_install: bool = False
    fallback: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.disagree <= 1 or not 0 <= self.error_rate <= 1:
            raise BehaviourError("disagree and error_rate must be within 0..1")
        if self.slow <= 0:
            raise BehaviourError("slow must be positive")

    @classmethod
    def parse(cls, spec: str) -> tuple[str, Behaviour]:
        """``name@version:disagree=0.2,slow=3,fail_install`` -> (ref, Behaviour)."""
        ref, _, rest = spec.partition(":")
        if "@" not in ref:
            raise BehaviourError(f"behaviour spec must start with name@version: {spec!r}")
        kwargs: dict[str, float | bool] = {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if key in ("fail_install", "fallback"):
                kwargs[key] = value.lower() not in ("0", "false", "no") if eq else True
            elif key in ("disagree", "slow", "error_rate"):
                try:
                    kwargs[key] = float(value)
                except ValueError as e:
                    raise BehaviourError(f"{key} needs a number, got {value!r}") from e
            else:
                raise BehaviourError(f"unknown behaviour {key!r}")
        return ref, cls(**kwargs)  # type: ignore[arg-type]


GOOD = Behaviour()
