"""The delegate interfaces: what a backend declares, what a session does.

A *backend* is one way to run a model (ONNX Runtime with one execution provider, later
LiteRT with a delegate, Core ML, ...). It declares the model formats it accepts, probes the
machine for what it needs, and opens sessions. A *session* runs one loaded model and says
which delegate really runs it: a requested accelerator that the runtime silently dropped is
reported as ``fallback=True``, never hidden.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Backend",
    "DelegateError",
    "DelegateUnavailableError",
    "ProbeResult",
    "Session",
]


class DelegateError(Exception):
    """A model could not be opened or run on a delegate."""


class DelegateUnavailableError(DelegateError):
    """The delegate is not present on this machine (library or hardware missing)."""


@dataclass(frozen=True)
class ProbeResult:
    """What a probe found: is the delegate usable here, and if not, why not."""

    name: str
    available: bool
    reason: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ProbeResult.name must not be empty")
        if not self.available and not self.reason:
            raise ValueError(f"unavailable delegate {self.name!r} needs a reason")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "available": self.available,
            "reason": self.reason,
            "details": dict(self.details),
        }


@runtime_checkable
class Session(Protocol):
    """One loaded model on one delegate."""

    delegate: str
    requested: str
    fallback: bool
    providers: tuple[str, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


@runtime_checkable
class Backend(Protocol):
    """A way to run models: declares formats, probes the machine, opens sessions."""

    name: str
    formats: frozenset[str]

    def probe(self) -> ProbeResult: ...

    def open(self, model_path: Path, options: Mapping[str, Any]) -> Session: ...
