"""Canonical JSON bytes, and the few readers that remain for local records.

Every MQTT payload of protocol 1 is a typed model (``ota.model``, ``ota.messages``,
``ota.acks``, ``ota.instructions``, ``ota.chunks``): its declaration validates it. What is
left here:

- ``dumps``: the canonical bytes messages are written (and instructions signed) as. A
  receiver verifies a signature over the bytes it received, never over a re-encoding
  (docs/security.md, invariant 1; ``ota.instructions.open_envelope``).
- ``require``: one-line value checks that depend on run-time limits (``ChunkRequest``'s
  window, a bundle's size limit).
- ``load_object`` and ``get_int``/``get_opt_str``/``get_obj``: kept only for the device
  record (``ota/updater/record.py``) until it is declared as a model too; new code
  declares a model instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ota.errors import ProtocolError
from ota.model import INT64_MAX, load_json

__all__ = ["INT64_MAX", "dumps", "get_int", "get_obj", "get_opt_str", "load_object", "require"]


def dumps(obj: Mapping[str, Any]) -> bytes:
    """Canonical JSON bytes: UTF-8, sorted keys, no whitespace, no NaN."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def require(cond: bool, message: str) -> None:
    """Raise ``ProtocolError(message)`` unless ``cond``."""
    if not cond:
        raise ProtocolError(message)


# ---- readers for local records (see the module docstring) ----------------------------------


def load_object(data: bytes, *, max_size: int, what: str) -> dict[str, Any]:
    """Parse ``data`` as a JSON object of at most ``max_size`` bytes."""
    obj = load_json(data, max_size=max_size, what=what)
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what}: payload must be a JSON object, got {type(obj).__name__}")
    return obj


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def get_int(obj: Mapping[str, Any], key: str, what: str) -> int:
    if key not in obj:
        raise ProtocolError(f"{what}: missing '{key}'")
    value = obj[key]
    if type(value) is not int:
        raise ProtocolError(f"{what}: '{key}' must be an integer, got {_kind(value)}")
    return value


def get_opt_str(obj: Mapping[str, Any], key: str, what: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"{what}: '{key}' must be a string, got {_kind(value)}")
    return value


def get_obj(obj: Mapping[str, Any], key: str, what: str) -> dict[str, Any] | None:
    """A nested object or ``None`` (a JSON null or an absent key)."""
    value = obj.get(key)
    if value is not None and not isinstance(value, dict):
        raise ProtocolError(f"{what}: '{key}' must be an object or null, got {_kind(value)}")
    return value
