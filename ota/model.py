"""Typed protocol models: the field types, the base class and the error mapping.

Every JSON message of protocol 1 is a frozen ``msgspec.Struct`` declared with the types
below (``docs/adr/0006-msgspec-protocol-models.md``, which replaced ADR 0003's pydantic
dataclasses to halve what the agent's imports cost). Scalars are strict: ``bool`` is never
an integer or a number, ``"7"`` is never an integer, and numbers must be finite (an integer
is accepted for a number and stored as a float). Containers accept JSON arrays for tuples.
Unknown keys are ignored (forward compatibility) unless a model says otherwise.

A value is checked both when it is decoded (``validate``: ``msgspec.convert`` of the parsed
JSON) and when it is built in code (``Model.__post_init__`` converts the value's builtins
again), so a bad value cannot be made either way. A ``msgspec.ValidationError`` never leaves
``ota``: it becomes a one-line ``ProtocolError`` naming the field (``Telemetry.latency_ms:
'p95' must be a number, got str``; ``DeviceState: install.seq must be >= 0, got -1``).
"""

from __future__ import annotations

import functools
import json
import re
import sys
import threading
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Annotated, Any, ClassVar, NoReturn, TypeVar

import msgspec
from msgspec import Meta
from msgspec.structs import force_setattr
from msgspec.structs import replace as _replace

from ota.errors import ProtocolError
from ota.limits import PROTOCOL_VERSION

INT64_MAX = 2**63 - 1
"""Largest integer a protocol field may carry (SQLite and most stores keep signed 64 bits)."""
FLOAT_MAX = sys.float_info.max
"""Bounds every number: what is above it is infinite (a JSON ``1e999``), so not finite."""

HEX64_PATTERN = r"^[0-9a-f]{64}$"
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
NAME_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""A variant or delegate name (the device id's alphabet, spelled apart for its message)."""
PEM_PATTERN = "^-----BEGIN PUBLIC KEY-----"

# ---- field types ---------------------------------------------------------------------------

Count = Annotated[int, Meta(ge=0, le=INT64_MAX)]
"""An integer 0 <= x < 2**63 (seq numbers, counters, indexes)."""
PositiveCount = Annotated[int, Meta(ge=1, le=INT64_MAX)]
Number = Annotated[float, Meta(ge=0.0, le=FLOAT_MAX)]
"""A finite number >= 0 (an integer is accepted and stored as a float)."""
SignedNumber = Annotated[float, Meta(ge=-FLOAT_MAX, le=FLOAT_MAX)]
Fraction = Annotated[float, Meta(ge=0.0, le=1.0)]
Bool = bool
Sha256 = Annotated[str, Meta(pattern=HEX64_PATTERN)]
"""64 lower-case hex characters."""
DeviceId = Annotated[str, Meta(pattern=DEVICE_ID_PATTERN)]
NameId = Annotated[str, Meta(pattern=NAME_ID_PATTERN)]


# Strings: ``TextN`` holds 1..N characters, ``MaybeEmptyN`` 0..N.
Text32 = Annotated[str, Meta(min_length=1, max_length=32)]
Text64 = Annotated[str, Meta(min_length=1, max_length=64)]
Text128 = Annotated[str, Meta(min_length=1, max_length=128)]
Text256 = Annotated[str, Meta(min_length=1, max_length=256)]
Text512 = Annotated[str, Meta(min_length=1, max_length=512)]
Text4096 = Annotated[str, Meta(min_length=1, max_length=4096)]
Text8192 = Annotated[str, Meta(min_length=1, max_length=8192)]
MaybeEmpty64 = Annotated[str, Meta(max_length=64)]
MaybeEmpty256 = Annotated[str, Meta(max_length=256)]
MaybeEmpty16384 = Annotated[str, Meta(max_length=16384)]


PATTERN_TEXT = {
    HEX64_PATTERN: "must be 64 lower-case hex characters",
    DEVICE_ID_PATTERN: "is an invalid device id: expected [A-Za-z0-9][A-Za-z0-9._-]{0,63}",
    NAME_ID_PATTERN: "must be 1-64 characters [A-Za-z0-9._-]",
    PEM_PATTERN: "must be a SubjectPublicKeyInfo PEM",
}
"""How a pattern mismatch reads."""


def field_error(name: str, text: str) -> ValueError:
    """What a model's ``check`` raises for one of its fields: the message names the field
    under the model's own path (``install.state is an unknown install state 'x'``)."""
    return ValueError(f".{name} {text}")


# ---- the base class ------------------------------------------------------------------------

class _Building(threading.local):
    depth = 0
    """Above 0 while msgspec builds values on this thread (convert or decode): it has
    checked the fields already."""


_BUILDING = _Building()


class _MsgspecBuilds:
    """``with _msgspec_builds:`` around a msgspec convert or decode (nestable; a class, not
    a generator: it wraps every decoded report on the server's ingest path)."""

    def __enter__(self) -> None:
        _BUILDING.depth += 1

    def __exit__(self, *exc: object) -> None:
        _BUILDING.depth -= 1


_msgspec_builds = _MsgspecBuilds()


class Model(msgspec.Struct, frozen=True):
    """A protocol value: checked when decoded and when built, ``to_dict()`` derived.

    Class settings: ``WHAT`` names the value in errors; ``ERROR`` is the ``ProtocolError``
    its constructor raises; ``NULL_AS`` maps a field to the factory of the value a JSON
    ``null`` reads as (fields older senders wrote as null); ``OMIT_NONE`` lists fields
    written only when set (older payloads keep their bytes). ``check()`` holds the rules
    that span fields; it raises ``ValueError`` (``field_error`` for one field)."""

    WHAT: ClassVar[str] = "value"
    ERROR: ClassVar[type[ProtocolError]] = ProtocolError
    NULL_AS: ClassVar[Mapping[str, Callable[[], Any]]] = {}
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        for name, factory in self.NULL_AS.items():
            if getattr(self, name) is None:
                force_setattr(self, name, factory())
        if _BUILDING.depth:
            self.check()
            return
        self._check_built()

    def check(self) -> None:
        """Rules beyond each field's type (none by default)."""

    def _check_built(self) -> None:
        """A value built in code: its builtins converted again, as a decoded one would be;
        the converted fields are kept (an integer given for a number becomes a float)."""
        cls = type(self)
        try:
            built = msgspec.to_builtins(self)
        except (TypeError, ValueError, OverflowError) as e:
            raise cls.ERROR(f"{cls.WHAT}: {e}") from None
        checked = _convert(cls, built, cls.WHAT, error=cls.ERROR)
        for name in self.__struct_fields__:
            force_setattr(self, name, getattr(checked, name))

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values (tuples as lists, nested models as objects), fields
        in ``OMIT_NONE`` left out when ``None``."""
        omit = self.OMIT_NONE
        return {name: _plain(value) for name in self.__struct_fields__
                if not ((value := getattr(self, name)) is None and name in omit)}


def _plain(value: Any) -> Any:
    if isinstance(value, Model):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Enum):
        return value.value
    return value


M = TypeVar("M", bound=msgspec.Struct)


def replace(value: M, **changes: Any) -> M:
    """A copy of ``value`` with ``changes``, checked again (``dataclasses.replace`` for
    models)."""
    return _replace(value, **changes)


# ---- ValidationError -> ProtocolError ------------------------------------------------------

_TYPE_NAMES = {"int": "an integer", "float": "a number", "str": "a string",
               "bool": "a boolean", "object": "an object", "array": "a list"}
_GOT_NAMES = {"object": "dict", "array": "list"}
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `(?:(?P<key>.*)` in `)?(?P<path>\$[^`]*)`)?$", re.S)
_TOKEN = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_MISSING = object()


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _short(value: Any) -> str:
    """An out-of-range integer for an error message, without printing a huge number."""
    if type(value) is int and abs(value) >= 10**40:
        return f"an integer of {value.bit_length()} bits"
    return str(value)


def _tokens(path: str) -> list[str | int]:
    out: list[str | int] = []
    for name, index in _TOKEN.findall(path.removeprefix("$")):
        out.append(name if name else (int(index) if index.isdigit() else "..."))
    return out


def _lookup(obj: Any, tokens: list[str | int]) -> Any:
    """The input value at ``tokens`` (``_MISSING`` where the path cannot be followed)."""
    for t in tokens:
        if isinstance(t, int) and isinstance(obj, list | tuple) and t < len(obj):
            obj = obj[t]
        elif isinstance(t, str) and t != "..." and isinstance(obj, dict) and t in obj:
            obj = obj[t]
        else:
            return _MISSING
    return obj


def _allowed(cls: type, tokens: list[str | int]) -> list[Any]:
    """The values a literal or enum field at ``tokens`` allows (for the error)."""
    import msgspec.inspect as mi  # only when an error needs it

    t: Any = mi.type_info(cls)
    for tok in [*tokens, None]:
        while isinstance(t, mi.UnionType):
            t = next((u for u in t.types if not isinstance(u, mi.NoneType)), t.types[0])
        if isinstance(t, mi.LiteralType):
            return list(t.values)
        if isinstance(t, mi.EnumType):
            return [m.value for m in t.cls]
        if tok is None:
            break
        if isinstance(t, mi.StructType | mi.DataclassType):
            t = next((f.type for f in t.fields if f.name == tok), None)
        elif isinstance(t, mi.DictType):
            t = t.value_type
        elif isinstance(t, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
            t = t.item_type
        else:
            return []
    return []


def _segments(tokens: list[str | int], key: str | None, indexes: bool = False) -> list[str]:
    """``tokens`` as path segments: a list item is ``name[]`` (``name[3]`` with
    ``indexes``), a map entry ``name[...]``, a map's key ``name key``."""
    segs: list[str] = []
    for t in tokens:
        if isinstance(t, str) and t != "...":
            segs.append(t)
        elif segs:
            segs[-1] += (f"[{t}]" if indexes else "[]") if isinstance(t, int) else "[...]"
    if key is not None and segs:
        segs[-1] += " key"
    return segs


def _value_detail(msg: str, value: Any, cls: type, tokens: list[str | int]) -> str:
    """What is wrong with a value of the right type, in protocol 1's words."""
    got = "" if value is _MISSING else f", got {_short(value)}"
    if m := re.fullmatch(r"Expected `(\w+)` (>=|>|<=|<) (\S+)", msg):
        if isinstance(value, float) and not (-FLOAT_MAX <= value <= FLOAT_MAX):
            return "must be finite"
        return f"must be {m[2]} {m[3]}{got}"
    if m := re.fullmatch(r"Expected `(str|array|object)` of length (>=|<=) (\d+)", msg):
        kind, op, n = m[1], m[2], int(m[3])
        if kind == "str":
            return "must not be empty" if op == ">=" and n == 1 else (
                f"longer than {n} characters" if op == "<=" else f"shorter than {n} characters")
        if op == "<=":
            have = "" if value is _MISSING else f"has {len(value)} items, "
            return f"{have}limit {n}"
        return "must not be empty" if n == 1 else f"needs at least {n} items"
    if m := re.fullmatch(r"Expected `str` matching regex '(.*)'", msg, re.S):
        return PATTERN_TEXT.get(m[1], f"must match {m[1]}") + (
            "" if value is _MISSING else f", got {value!r:.80}")
    if msg.startswith("Invalid enum value"):
        allowed = ", ".join(repr(v) for v in _allowed(cls, tokens))
        return f"must be one of {allowed}" + ("" if value is _MISSING else f", got {value!r:.80}")
    return msg


def describe(e: msgspec.ValidationError, obj: Any, cls: type, what: str,
             *, quoted: bool = True, indexes: bool = False) -> str:
    """One line for a msgspec error: ``what``, the field path, and what is wrong.

    Type and presence errors read ``{what}.{parent}: '{key}' must be ...`` (``quoted``, the
    style of protocol 1's first parsers) or ``{what}: {path} must be ...``; value errors
    read ``{what}: {path} ...``; a model's own rule ``{what}: {path} {its message}``."""
    m = _AT.match(str(e))
    if m is None:  # the pattern matches any text; kept for the type checker
        return f"{what}: {e}"
    msg, key, path = m["msg"], m["key"], m["path"] or "$"
    tokens = _tokens(path)
    segs = _segments(tokens, key, indexes)
    value = _lookup(obj, tokens) if key is None else key
    if t := re.fullmatch(r"Expected `([^`]+)`, got `([^`]+)`", msg):
        expected = next((x for x in t[1].split(" | ") if x != "null"), t[1])
        got = _kind(value) if value is not _MISSING else _GOT_NAMES.get(t[2], t[2])
        if not segs:
            return f"{what}: payload must be a JSON object, got {got}"
        return _keyed(what, segs, quoted, f"must be {_TYPE_NAMES.get(expected, expected)}, got {got}")
    if f := re.fullmatch(r"Object missing required field `(.+)`", msg):
        return _keyed(what, [*segs, f[1]], quoted, None)
    if f := re.fullmatch(r"Object contains unknown field `(.+)`", msg):
        return f"{'.'.join([what, *segs])}: unknown keys {[f[1]]}"
    if msg.startswith("."):  # field_error: the field under the model's path
        rel = ".".join([*segs, msg[1:]]) if segs else msg[1:]
        return f"{what}: {rel}"
    detail = _value_detail(msg, value, cls, tokens)
    where = ".".join(segs)
    return f"{what}: {where} {detail}" if where else f"{what}: {detail}"


def _keyed(what: str, segs: list[str], quoted: bool, must: str | None) -> str:
    key = segs[-1]
    if quoted:
        where = ".".join([what, *segs[:-1]])
        name = key if key.endswith("]") else f"'{key}'"
    else:
        where, name = what, ".".join(segs)
    return f"{where}: missing {name}" if must is None else f"{where}: {name} {must}"


def describe_nested(e: msgspec.ValidationError, obj: Any, cls: type, field: str) -> ValueError:
    """A nested value's error as a ``field_error`` of the field holding it (for a model
    whose ``check`` validates a plain object against another declaration)."""
    line = describe(e, obj, cls, "", quoted=False).removeprefix(": ")
    return ValueError(f".{field}.{line}" if not line.startswith("must") else f".{field} {line}")


T = TypeVar("T")


def _convert(cls: type[T], obj: Any, what: str, *,
             error: type[ProtocolError] = ProtocolError) -> T:
    try:
        return check_as(cls, obj)
    except msgspec.ValidationError as e:
        raise error(describe(e, obj, cls, what)) from None


def validate(cls: type[T], obj: Any, what: str) -> T:
    """``obj`` (decoded JSON) validated into ``cls``; ``ProtocolError`` naming the field."""
    return _convert(cls, obj, what)


def check_as(cls: type[T], obj: Any) -> T:
    """``obj`` converted into ``cls``; ``msgspec.ValidationError`` as raised (for a model's
    ``check`` that validates a plain object against another declaration)."""
    with _msgspec_builds:
        return msgspec.convert(obj, cls)


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


class _Protocol(msgspec.Struct):
    protocol: int | None = None


_PROTOCOL = msgspec.json.Decoder(_Protocol)


@functools.cache
def _cached_decoder(cls: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(cls)


def decode_fast(cls: type[T], data: bytes, *, max_size: int) -> T | None:
    """A protocol message's bytes (``"protocol": 1``, at most ``max_size``) decoded by
    msgspec straight into ``cls``; None when that decoder refuses them (the caller then
    parses them the slow way, for the error naming the field)."""
    if not isinstance(data, bytes) or len(data) > max_size:
        return None
    try:
        with _msgspec_builds:
            if _PROTOCOL.decode(data).protocol != PROTOCOL_VERSION:
                return None
            value: T = _cached_decoder(cls).decode(data)  # type: ignore[arg-type]
            return value
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def load_typed(cls: type[T], data: bytes, *, max_size: int, what: str) -> T:
    """A protocol message's bytes as ``cls``: what ``validate(cls, load_message(...))``
    gives, decoded by msgspec straight from the bytes (``decode_fast``); anything that
    decoder refuses goes the slow way (``json.loads``, then ``validate``) for the error
    naming the field."""
    value = decode_fast(cls, data, max_size=max_size)
    if value is not None:
        return value
    return validate(cls, load_message(data, max_size=max_size, what=what), what)
