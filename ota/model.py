"""Typed protocol models: the field types, the decorator and the error mapping.

Every JSON message of protocol 1 is a frozen pydantic v2 dataclass declared with the types
below (``docs/adr/0003-typed-payload-models.md``). Scalars are strict: ``bool`` is never an
integer or a number, ``"7"`` is never an integer, and numbers must be finite. Containers
accept JSON arrays for tuples. Unknown keys are ignored (forward compatibility) unless a
model says otherwise.

A ``pydantic.ValidationError`` never leaves ``ota``: ``protocol_model`` converts the one
raised by a constructor, and ``validate`` the one raised by a parse, into a one-line
``ProtocolError`` naming the field (``Telemetry.latency_ms: 'p95' must be a number, got
str``; ``DeviceState: install.seq must be >= 0, got -1``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from typing import Annotated, Any, NoReturn, TypeVar

from pydantic import BeforeValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError

from ota.errors import ProtocolError
from ota.limits import PROTOCOL_VERSION

INT64_MAX = 2**63 - 1
"""Largest integer a protocol field may carry (SQLite and most stores keep signed 64 bits)."""

HEX64_PATTERN = r"^[0-9a-f]{64}$"
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
NAME_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""A variant or delegate name (the device id's alphabet, spelled apart for its message)."""

CONFIG = ConfigDict(allow_inf_nan=False, extra="ignore")
"""Shared model config: finite numbers, unknown keys ignored (models are frozen)."""

# ---- field types ---------------------------------------------------------------------------

Count = Annotated[int, Strict(), Field(ge=0, le=INT64_MAX)]
"""An integer 0 <= x < 2**63 (seq numbers, counters, indexes)."""
PositiveCount = Annotated[int, Strict(), Field(ge=1, le=INT64_MAX)]
Number = Annotated[float, Strict(), Field(ge=0.0)]
"""A finite number >= 0 (an integer is accepted and stored as a float)."""
SignedNumber = Annotated[float, Strict()]
Fraction = Annotated[float, Strict(), Field(ge=0.0, le=1.0)]
Bool = Annotated[bool, Strict()]
Sha256 = Annotated[str, Strict(), Field(pattern=HEX64_PATTERN)]
"""64 lower-case hex characters."""
DeviceId = Annotated[str, Strict(), Field(pattern=DEVICE_ID_PATTERN)]
NameId = Annotated[str, Strict(), Field(pattern=NAME_ID_PATTERN)]


# Strings: ``TextN`` holds 1..N characters, ``MaybeEmptyN`` 0..N.
Text32 = Annotated[str, Strict(), Field(min_length=1, max_length=32)]
Text64 = Annotated[str, Strict(), Field(min_length=1, max_length=64)]
Text128 = Annotated[str, Strict(), Field(min_length=1, max_length=128)]
Text256 = Annotated[str, Strict(), Field(min_length=1, max_length=256)]
Text512 = Annotated[str, Strict(), Field(min_length=1, max_length=512)]
Text4096 = Annotated[str, Strict(), Field(min_length=1, max_length=4096)]
Text8192 = Annotated[str, Strict(), Field(min_length=1, max_length=8192)]
MaybeEmpty64 = Annotated[str, Strict(), Field(max_length=64)]
MaybeEmpty256 = Annotated[str, Strict(), Field(max_length=256)]
MaybeEmpty16384 = Annotated[str, Strict(), Field(max_length=16384)]


def null_as(default: Any, json_type: Any) -> BeforeValidator:
    """Read a JSON ``null`` as ``default`` (fields older senders wrote as null)."""
    return BeforeValidator(lambda v: default if v is None else v,
                           json_schema_input_type=json_type | None)


PATTERN_TEXT = {
    HEX64_PATTERN: "must be 64 lower-case hex characters",
    DEVICE_ID_PATTERN: "is an invalid device id: expected [A-Za-z0-9][A-Za-z0-9._-]{0,63}",
    NAME_ID_PATTERN: "must be 1-64 characters [A-Za-z0-9._-]",
}
"""How a pattern mismatch reads."""

# ---- ValidationError -> ProtocolError ------------------------------------------------------

_TYPE_ERRORS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "string_type": "a string",
    "bool_type": "a boolean", "bool_parsing": "a boolean", "dict_type": "an object",
    "dataclass_type": "an object", "dataclass_exact_type": "an object",
    "model_type": "an object", "list_type": "a list", "tuple_type": "a list",
}


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _short(value: Any) -> str:
    """An out-of-range integer for an error message, without printing a huge number."""
    if type(value) is int and abs(value) >= 10**40:
        return f"an integer of {value.bit_length()} bits"
    return str(value)


def _segments(loc: tuple[int | str, ...], fields: tuple[str, ...]) -> list[str]:
    """``loc`` as path segments: a list item is ``name[]``, a positional argument its field."""
    segs: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int):
            if i == 0 and part < len(fields):
                segs.append(fields[part])
            elif segs:
                segs[-1] += "[]"
        elif part == "[key]":
            segs[-1] += " key"
        else:
            segs.append(part)
    return segs


def _value_detail(kind: str, ctx: dict[str, Any], value: Any, msg: str) -> str:
    """What is wrong with a value of the right type."""
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op, key = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
                   "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}[kind]
        return f"must be {op} {ctx.get(key)}, got {_short(value)}"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern"))
        return PATTERN_TEXT.get(pattern, f"must match {pattern}") + f", got {value!r:.80}"
    fixed = {
        "finite_number": "must be finite",
        "string_too_short": "must not be empty",
        "string_too_long": f"longer than {ctx.get('max_length')} characters",
        "too_long": f"has {ctx.get('actual_length')} items, limit {ctx.get('max_length')}",
        "too_short": f"needs at least {ctx.get('min_length')} items",
        "literal_error": f"must be one of {ctx.get('expected')}, got {value!r:.80}",
        "value_error": str(ctx.get("error", msg)),
        "assertion_error": str(ctx.get("error", msg)),
    }
    return fixed.get(kind, msg)


def describe(err: Mapping[str, Any], what: str, fields: tuple[str, ...] = (),
             *, quoted: bool = True) -> str:
    """One line for one pydantic error: ``what``, the field path, and what is wrong.

    Type and presence errors read ``{what}.{parent}: '{key}' must be ...`` (``quoted``, the
    style of protocol 1's first parsers) or ``{what}: {path} must be ...``; value errors
    read ``{what}: {path} ...``."""
    segs = _segments(tuple(err["loc"]), fields)
    path = ".".join(segs)
    kind, value = err["type"], err["input"]
    if kind in _TYPE_ERRORS and not segs:
        return f"{what}: payload must be a JSON object, got {_kind(value)}"
    unknown = kind in ("extra_forbidden", "unexpected_keyword_argument")
    if kind in _TYPE_ERRORS or kind == "missing" or unknown:
        key = segs[-1] if segs else "?"
        if quoted or unknown:
            where = ".".join([what, *segs[:-1]])
            name = key if key.endswith("]") else f"'{key}'"
        else:
            where, name = what, path
        if unknown:
            return f"{where}: unknown keys {[key]}"
        if kind == "missing":
            return f"{where}: missing {name}"
        return f"{where}: {name} must be {_TYPE_ERRORS[kind]}, got {_kind(value)}"
    detail = _value_detail(kind, dict(err.get("ctx") or {}), value, str(err["msg"]))
    return f"{what}: {path} {detail}" if path else f"{what}: {detail}"


def protocol_error(e: ValidationError, what: str, fields: tuple[str, ...] = (),
                   *, quoted: bool = True) -> ProtocolError:
    """``e`` as a one-line ``ProtocolError`` (its first error; a count of the others)."""
    errors = e.errors(include_url=False)
    line = describe(errors[0], what, fields, quoted=quoted)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ProtocolError(line + more)


T = TypeVar("T")


def protocol_model(what: str, *, error: type[ProtocolError] = ProtocolError,
                   ) -> Callable[[type[T]], type[T]]:
    """Make a pydantic dataclass's constructor raise ``error`` (a ``ProtocolError``) instead
    of ``ValidationError`` (apply above ``@pydantic.dataclasses.dataclass``)."""

    def wrap(cls: type[T]) -> type[T]:
        init = cls.__init__
        fields = tuple(cls.__dataclass_fields__)  # type: ignore[attr-defined]

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as e:
                raise error(str(protocol_error(e, what, fields))) from None

        cls.__init__ = __init__  # type: ignore[method-assign]
        return cls

    return wrap


# ---- value <-> dict ------------------------------------------------------------------------


def omitted_when_none() -> Any:
    """A field written only when set (older payloads keep their bytes)."""
    return Field(exclude_if=lambda v: v is None)


class Declared:
    """``to_dict()`` for a model: its fields as JSON values (tuples as lists), nested
    models included, fields declared ``omitted_when_none()`` left out when ``None``."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = adapter(type(self)).dump_python(self, mode="json")
        return out


# ---- bytes -> value ------------------------------------------------------------------------


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"non-finite number {name} is not allowed")


def load_json(data: bytes, *, max_size: int, what: str) -> Any:
    """Parse at most ``max_size`` bytes of JSON (no NaN/Infinity, bounded nesting)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"{what}: payload must be bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise ProtocolError(f"{what}: payload of {len(data)} bytes exceeds limit {max_size}")
    try:
        return json.loads(bytes(data).decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError(f"{what}: payload is not valid JSON: {e}") from e


def load_message(data: bytes, *, max_size: int, what: str) -> dict[str, Any]:
    """A JSON object carrying ``"protocol": PROTOCOL_VERSION`` (checked before any field)."""
    obj = load_json(data, max_size=max_size, what=what)
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what}: payload must be a JSON object, got {_kind(obj)}")
    if "protocol" not in obj:
        raise ProtocolError(f"{what}: missing 'protocol'")
    value = obj["protocol"]
    if type(value) is not int or value != PROTOCOL_VERSION:
        raise ProtocolError(
            f"{what}: unsupported protocol {value!r:.40} (this side speaks {PROTOCOL_VERSION})"
        )
    return obj


@functools.cache
def _cached_adapter(cls: Any) -> TypeAdapter[Any]:
    return TypeAdapter(cls)


def adapter(cls: type[T]) -> TypeAdapter[T]:
    """The cached ``TypeAdapter`` that validates a decoded object into ``cls``."""
    # classes are hashable, but mypy does not match type[T] to typeshed's Hashable
    cached: TypeAdapter[T] = _cached_adapter(cls)  # type: ignore[arg-type]
    return cached


def validate(cls: type[T], obj: Any, what: str) -> T:
    """``obj`` (decoded JSON) validated into ``cls``; ``ProtocolError`` naming the field."""
    try:
        return adapter(cls).validate_python(obj)
    except ValidationError as e:
        raise protocol_error(e, what) from None
