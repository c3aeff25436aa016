"""delegates: inference backends, what this machine offers, and which one to use.

Leaf library: knows nothing about bundles or the protocol.
"""

from delegates.base import (
    Backend,
    DelegateError,
    DelegateUnavailableError,
    ProbeResult,
    Session,
)
from delegates.onnxruntime_backend import OrtBackend, OrtSession
from delegates.policy import Selection, Skipped, select
from delegates.registry import default_backends, probe_all

__all__ = [
    "Backend",
    "DelegateError",
    "DelegateUnavailableError",
    "OrtBackend",
    "OrtSession",
    "ProbeResult",
    "Selection",
    "Session",
    "Skipped",
    "default_backends",
    "probe_all",
    "select",
]
