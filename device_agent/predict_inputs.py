"""Caller inputs to arrays for ``predict``: the npz and JSON decoders of the local API and
the strict cast to each input's declared dtype.

Rules (``docs/local-api.md``):

- npz: every member is checked from its zip entry and its npy header *before* any array is
  read: at most one member per model input, named after an input, a plain numeric dtype
  (bool, int, uint, float; no object, string, complex or structured arrays, never a
  pickle), a byte size within the input's bound (its declared shape times 8 bytes when every
  dimension is fixed, else ``max_bytes``) and all members together within ``max_bytes``;
  the zip entry's declared uncompressed size must be exactly the npy header plus the data,
  and the data must decompress to exactly that size with a matching CRC.
- casts: a value the target dtype cannot hold is refused, never rounded or saturated:
  non-integers or out-of-range values into int inputs, values past the float range (which
  would become inf), NaN and +-Infinity for every input (non-finite inputs are refused; no
  input accepts them), booleans for numeric inputs, numbers other than 0/1 for bool
  inputs, strings and other non-numbers for any input.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import msgspec
import numpy as np
from numpy.lib import format as npy

from device_agent.errors import InputTooLargeError, PredictError

__all__ = ["PredictRequest", "as_input_array", "decode_declared", "decode_json", "decode_npz",
           "input_bounds"]

_MAX_HEADER = 10_000  # numpy's own default bound on an npy header
_NUMERIC = "biuf"


# -- decoding ------------------------------------------------------------------------


class PredictRequest(msgspec.Struct, frozen=True):
    """``POST /v1/predict`` with JSON: ``{"inputs": {name: nested list | scalar}}``."""

    inputs: dict[str, Any]


_PREDICT = msgspec.json.Decoder(PredictRequest)
_SHAPE = 'body must be a JSON object {"inputs": {name: tensor}}'
B = TypeVar("B")


def decode_declared(body: bytes, decoder: msgspec.json.Decoder[B], what: str,
                    refusal: Callable[[msgspec.ValidationError, Any], PredictError]) -> B:
    """A local API body decoded as ``decoder`` declares it. What msgspec's decoder refuses is
    read again with ``json.loads`` (which also takes Python's ``NaN``/``Infinity`` and makes
    ``1e400`` infinite, for the cast to refuse by name) and converted; ``refusal`` (given the
    error and the parsed object) words what is still wrong."""
    try:
        return decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        pass
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise PredictError(f"{what} is not valid JSON: {e}") from e
    try:
        value: B = msgspec.convert(obj, decoder.type)
        return value
    except msgspec.ValidationError as e:
        raise refusal(e, obj) from None


def decode_json(body: bytes) -> dict[str, Any]:
    """``{"inputs": {name: nested list | scalar}}`` -> the inputs mapping (not yet cast)."""
    return decode_declared(body, _PREDICT, "body",
                           lambda e, _obj: PredictError(f"{_SHAPE} ({e})")).inputs


def input_bounds(inputs: Sequence[Any], max_bytes: int) -> dict[str, int]:
    """The most bytes each input's array may take in a request: 8 bytes (the widest
    numeric dtype) per element of its declared shape when every dimension is fixed, else
    ``max_bytes``. ``inputs`` are the manifest's tensors (``name``, ``shape``)."""
    bounds = {}
    for t in inputs:
        fixed = all(isinstance(d, int) for d in t.shape)
        bounds[t.name] = min(max_bytes, 8 * math.prod(t.shape)) if fixed else max_bytes
    return bounds


def decode_npz(body: bytes, bounds: Mapping[str, int], max_bytes: int) -> dict[str, np.ndarray]:
    """The named arrays of an npz body, each checked before it is read (module doc).
    ``InputTooLargeError`` when an array is over its bound, ``PredictError`` otherwise."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(body))
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise PredictError(f"body is not a valid npz archive: {e}") from e
    with zf:
        infos = zf.infolist()
        if len(infos) > len(bounds):
            raise PredictError(f"npz has {len(infos)} arrays; the model takes "
                               f"{len(bounds)} input{'s' if len(bounds) != 1 else ''}")
        names = [_member_name(i, bounds) for i in infos]
        declared = sum(i.file_size for i in infos)
        if declared > max_bytes + _MAX_HEADER * len(infos):
            raise InputTooLargeError(
                f"npz arrays declare {declared} bytes uncompressed, over the "
                f"{max_bytes}-byte input limit")
        return {name: _read_member(zf, info, name, bounds[name])
                for name, info in zip(names, infos, strict=True)}


def _member_name(info: zipfile.ZipInfo, bounds: Mapping[str, int]) -> str:
    if not info.filename.endswith(".npy"):
        raise PredictError(f"npz member {info.filename!r} is not an .npy array")
    name = info.filename[:-4]
    if name not in bounds:
        raise PredictError(f"unknown input {name!r}; the model takes "
                           + ", ".join(repr(n) for n in bounds))
    return name


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, bound: int
                 ) -> np.ndarray:
    try:
        with zf.open(info) as f:
            shape, fortran, dtype = _read_header(f, name)
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > bound:
                raise InputTooLargeError(
                    f"input {name!r}: array of shape {list(shape)} {dtype.name} is {nbytes} "
                    f"bytes, over the {bound}-byte limit for this input")
            header_len = f.tell()
            if info.file_size != header_len + nbytes:
                raise PredictError(
                    f"input {name!r}: the zip entry declares {info.file_size} bytes "
                    f"uncompressed, its npy header describes {header_len + nbytes}")
            buf = bytearray(nbytes)
            # ZipFile.open gives a ZipExtFile (has readinto); typeshed says IO[bytes]
            got = f.readinto(buf) if nbytes else 0  # type: ignore[attr-defined]
            if got != nbytes or f.read(1):  # read(1) at the end also checks the CRC
                raise PredictError(f"input {name!r}: array data is {got} bytes, "
                                   f"its header says {nbytes}")
    except PredictError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, RuntimeError,
            NotImplementedError) as e:
        raise PredictError(f"input {name!r}: npz member is corrupt: {e}") from e
    arr = np.frombuffer(buf, dtype=dtype)
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def _read_header(f: Any, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = npy.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = npy.read_array_header_1_0(f, max_header_size=_MAX_HEADER)
    elif version == (2, 0):
        shape, fortran, dtype = npy.read_array_header_2_0(f, max_header_size=_MAX_HEADER)
    else:
        raise PredictError(f"input {name!r}: npy format {version[0]}.{version[1]} is not "
                           "supported (use numpy.savez)")
    if dtype.hasobject or dtype.kind not in _NUMERIC or dtype.fields is not None:
        raise PredictError(f"input {name!r}: arrays of dtype {dtype} are refused; send "
                           "bool, int, uint or float arrays")
    return tuple(shape), bool(fortran), dtype


# -- casting -------------------------------------------------------------------------


def _has_bool(value: Any) -> bool:
    """Whether a JSON-like nested list holds a ``True``/``False`` (cheap: C-level scans)."""
    if isinstance(value, bool):
        return True
    if not isinstance(value, list | tuple) or not value:
        return False
    types = set(map(type, value))
    if bool in types:
        return True
    if list not in types and tuple not in types:  # a row of numbers: done
        return False
    return any(_has_bool(v) for v in value if isinstance(v, list | tuple))


def _check(raw: np.ndarray, dtype: np.dtype) -> None:
    """Raise ``ValueError`` when ``raw`` cannot be cast to ``dtype`` without loss."""
    kind = raw.dtype.kind
    if kind not in _NUMERIC:
        raise ValueError("has values that are not numbers" + (
            " (or integers too large for int64)" if kind == "O" else f" ({raw.dtype})"))
    if kind == "b" and dtype.kind != "b":
        raise ValueError(f"has booleans; a {dtype.name} input takes numbers")
    if not raw.size:
        return
    if kind == "f" and not np.isfinite(raw).all():
        raise ValueError("has NaN or infinite values (non-finite inputs are refused)")
    if dtype.kind in "iub" and kind == "f" and np.any(raw != np.trunc(raw)):
        raise ValueError("has non-integer values")
    if dtype.kind in "iu" and kind in "iuf":
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise ValueError(f"has values outside the {dtype.name} range")
    if dtype.kind == "b" and kind in "iuf" and np.any((raw != 0) & (raw != 1)):
        raise ValueError("has values other than 0 and 1 (true/false)")


def _surely_finite(arr: np.ndarray) -> bool:
    """True only when ``arr`` (floating point) holds no NaN or inf; False may also mean
    very large values (then the exact check decides). float32/float64: the dot product of
    the array with itself (BLAS, about twice as fast as a sum; squares cannot cancel, so
    NaN or inf anywhere makes it NaN or inf); other widths: the sum."""
    if arr.dtype.char in "fd":
        return math.isfinite(np.vdot(arr, arr))
    return math.isfinite(np.add.reduce(arr, axis=None))


def as_input_array(name: str, value: Any, dtype: np.dtype) -> np.ndarray:
    """``value`` as an array of ``dtype``, refusing every lossy cast (module doc) with a
    ``PredictError`` naming the input and the reason."""
    if type(value) is np.ndarray and value.dtype == dtype and (
            dtype.kind != "f" or _surely_finite(value)):
        return value  # nothing to cast, and no NaN or inf (fast path)
    try:
        if isinstance(value, np.ndarray):
            raw = value
        else:
            if dtype.kind != "b" and _has_bool(value):
                raise ValueError(f"has booleans; a {dtype.name} input takes numbers")
            raw = np.asarray(value)
        _check(raw, dtype)
        if raw.dtype == dtype:
            return raw
        with np.errstate(over="ignore", invalid="ignore"):
            arr = raw.astype(dtype)
        if dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
            raise ValueError(f"has values outside the {dtype.name} range "
                             f"(+-{float(np.finfo(dtype).max):g}): they would become inf")
        return arr
    except (ValueError, TypeError, OverflowError) as e:
        raise PredictError(f"input {name!r}: cannot convert to {dtype.name}: {e}") from e
