"""Canonical JSON bytes and one-line value checks.

Every MQTT payload of protocol 1 is a typed model (``ota.model``, ``ota.messages``,
``ota.acks``, ``ota.instructions``, ``ota.chunks``): its declaration validates it. What is
left here:

- ``dumps``: the canonical bytes messages are written (and instructions signed) as. A
  receiver verifies a signature over the bytes it received, never over a re-encoding
  (docs/security.md, invariant 1; ``ota.instructions.open_envelope``).
- ``require``: one-line value checks that depend on run-time limits (``ChunkRequest``'s
  window, a bundle's size limit).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ota.errors import ProtocolError
from ota.model import INT64_MAX

__all__ = ["INT64_MAX", "dumps", "require"]


def dumps(obj: Mapping[str, Any]) -> bytes:
    """Canonical JSON bytes: UTF-8, sorted keys, no whitespace, no NaN."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def require(cond: bool, message: str) -> None:
    """Raise ``ProtocolError(message)`` unless ``cond``."""
    if not cond:
        raise ProtocolError(message)
