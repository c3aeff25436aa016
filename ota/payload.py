"""Strict readers for JSON payloads: bounded parse, protocol check, typed fields.

Unknown keys are ignored (forward compatibility); known keys must have the right type.
``bool`` is never accepted where a number is expected.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, NoReturn

from ota.errors import ProtocolError
from ota.limits import PROTOCOL_VERSION

HEX64_RE = re.compile(r"[0-9a-f]{64}")

INT64_MAX = 2**63 - 1
"""Largest integer a protocol field may carry (SQLite and most stores keep signed 64 bits)."""


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"non-finite number {name} is not allowed")


def dumps(obj: Mapping[str, Any]) -> bytes:
    """Canonical JSON bytes: UTF-8, sorted keys, no whitespace, no NaN."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def load_object(data: bytes, *, max_size: int, what: str) -> dict[str, Any]:
    """Parse ``data`` as a JSON object of at most ``max_size`` bytes."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"{what}: payload must be bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise ProtocolError(f"{what}: payload of {len(data)} bytes exceeds limit {max_size}")
    try:
        obj = json.loads(bytes(data).decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError(f"{what}: payload is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what}: payload must be a JSON object, got {type(obj).__name__}")
    return obj


def check_protocol(obj: Mapping[str, Any], what: str) -> None:
    """Refuse a payload whose ``"protocol"`` is not ``PROTOCOL_VERSION``."""
    if "protocol" not in obj:
        raise ProtocolError(f"{what}: missing 'protocol'")
    value = obj["protocol"]
    if type(value) is not int or value != PROTOCOL_VERSION:
        raise ProtocolError(
            f"{what}: unsupported protocol {value!r} (this side speaks {PROTOCOL_VERSION})"
        )


def _get(obj: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in obj:
        raise ProtocolError(f"{what}: missing '{key}'")
    return obj[key]


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def get_str(obj: Mapping[str, Any], key: str, what: str) -> str:
    value = _get(obj, key, what)
    if not isinstance(value, str):
        raise ProtocolError(f"{what}: '{key}' must be a string, got {_kind(value)}")
    return value


def get_opt_str(obj: Mapping[str, Any], key: str, what: str) -> str | None:
    if obj.get(key) is None:
        return None
    return get_str(obj, key, what)


def get_int(obj: Mapping[str, Any], key: str, what: str) -> int:
    value = _get(obj, key, what)
    if type(value) is not int:
        raise ProtocolError(f"{what}: '{key}' must be an integer, got {_kind(value)}")
    return value


def get_opt_int(obj: Mapping[str, Any], key: str, what: str) -> int | None:
    if obj.get(key) is None:
        return None
    return get_int(obj, key, what)


def get_float(obj: Mapping[str, Any], key: str, what: str) -> float:
    value = _get(obj, key, what)
    if type(value) not in (int, float):
        raise ProtocolError(f"{what}: '{key}' must be a number, got {_kind(value)}")
    return float(value)


def get_obj(obj: Mapping[str, Any], key: str, what: str) -> dict[str, Any] | None:
    """A nested object or ``None`` (a JSON null or an absent key)."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what}: '{key}' must be an object or null, got {_kind(value)}")
    return value


def get_str_list(obj: Mapping[str, Any], key: str, what: str) -> tuple[str, ...]:
    value = _get(obj, key, what)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"{what}: '{key}' must be a list of strings")
    return tuple(value)


# ---- value checks used by the dataclasses' __post_init__ -----------------------------------


def require(cond: bool, message: str) -> None:
    """Raise ``ProtocolError(message)`` unless ``cond``."""
    if not cond:
        raise ProtocolError(message)


def check_str(value: Any, name: str, *, max_len: int = 1024, empty: bool = False) -> None:
    require(isinstance(value, str), f"{name} must be a string, got {_kind(value)}")
    require(empty or value != "", f"{name} must not be empty")
    require(len(value) <= max_len, f"{name} longer than {max_len} characters")


def check_opt_str(value: Any, name: str, *, max_len: int = 1024) -> None:
    if value is not None:
        check_str(value, name, max_len=max_len)


def check_int(value: Any, name: str, *, minimum: int = 0, maximum: int = INT64_MAX) -> None:
    require(type(value) is int, f"{name} must be an integer, got {_kind(value)}")
    require(value >= minimum, f"{name} must be >= {minimum}, got {value}")
    require(value <= maximum, f"{name} must be <= {maximum}, got {_short(value)}")


def _short(value: int) -> str:
    """An out-of-range integer for an error message, without printing a huge number."""
    return str(value) if abs(value) < 10**40 else f"an integer of {value.bit_length()} bits"


def check_number(value: Any, name: str, *, minimum: float | None = 0.0) -> None:
    require(type(value) in (int, float), f"{name} must be a number, got {_kind(value)}")
    require(math.isfinite(value), f"{name} must be finite")
    require(minimum is None or value >= minimum, f"{name} must be >= {minimum}, got {value}")


def check_sha256(value: Any, name: str) -> None:
    require(
        isinstance(value, str) and HEX64_RE.fullmatch(value) is not None,
        f"{name} must be 64 lower-case hex characters",
    )


def check_opt_sha256(value: Any, name: str) -> None:
    if value is not None:
        check_sha256(value, name)
