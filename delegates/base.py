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
    "Execution",
    "ProbeResult",
    "Session",
    "execution_of",
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


@dataclass(frozen=True)
class Execution:
    """Proof of what runs a session: the delegate asked for, what the runtime really uses,
    and (ONNX Runtime) how many graph nodes each provider got in a profiled warm-up run.

    ``fallback`` is True when the requested accelerator ended up (wholly) elsewhere;
    ``fallback_reason`` then says why, with the node counts.
    """

    requested: str
    delegate: str
    providers: tuple[str, ...]
    node_counts: Mapping[str, int] = field(default_factory=dict, hash=False)
    fallback: bool = False
    fallback_reason: str | None = None

    def __post_init__(self) -> None:
        if not self.requested or not self.delegate:
            raise ValueError("Execution needs requested and delegate")
        object.__setattr__(self, "providers", tuple(self.providers))
        object.__setattr__(self, "node_counts", dict(self.node_counts))
        for k, v in self.node_counts.items():
            if not isinstance(k, str) or not isinstance(v, int) or v < 0:
                raise ValueError(f"bad node count {k!r}: {v!r}")
        if self.fallback and not self.fallback_reason:
            raise ValueError("a fallback needs a reason")

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "delegate": self.delegate,
            "providers": list(self.providers),
            "node_counts": dict(self.node_counts),
            "fallback": self.fallback,
            "fallback_reason": self.fallback_reason,
        }


def execution_of(session: Session) -> Execution:
    """The ``Execution`` record of any session (attributes of the ``Session`` protocol)."""
    return Execution(
        requested=session.requested,
        delegate=session.delegate,
        providers=tuple(session.providers),
        node_counts=dict(getattr(session, "node_counts", {}) or {}),
        fallback=bool(session.fallback),
        fallback_reason=getattr(session, "fallback_reason", None)
        or ("fell back" if session.fallback else None),
    )


@runtime_checkable
class Session(Protocol):
    """One loaded model on one delegate.

    ``node_counts`` maps each provider/delegate that really runs part of the model to its
    number of graph nodes (empty when the runtime cannot say); ``fallback`` is True when the
    requested delegate is not what runs the model, and ``fallback_reason`` says why.
    """

    delegate: str
    requested: str
    fallback: bool
    fallback_reason: str | None
    node_counts: dict[str, int]
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
