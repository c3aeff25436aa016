"""Triton's binary tensor data extension of the Open Inference Protocol (HTTP/REST).

A request or response body is a JSON header of ``Inference-Header-Content-Length`` bytes
followed by the raw tensor data of every tensor whose ``parameters.binary_data_size`` is
set, in the order the tensors appear in the header. Raw data is the tensor's elements in
row-major order, little-endian, BOOL one byte per element (0 or 1). BYTES tensors (4-byte
length-prefixed strings) are not carried: no model input or output of a bundle is a
string (``docs/local-api.md``).

Everything here is pure: bytes in, arrays or bytes out, ``PredictError`` for a malformed
body and ``InputTooLargeError`` for a tensor over its size bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from device_agent.errors import InputTooLargeError, PredictError

__all__ = ["HEADER", "join_body", "split_body", "tensor_bytes", "tensor_from_bytes"]

HEADER = "Inference-Header-Content-Length"


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """(JSON header, the binary data after it). Without the header field the whole body is
    the JSON header and there is no binary data."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length.strip())
    except ValueError as e:
        raise PredictError(f"{HEADER} must be an integer, got {header_length!r}") from e
    if not 0 < n <= len(body):
        raise PredictError(f"{HEADER} is {n}; the body has {len(body)} bytes")
    view = memoryview(body)
    return bytes(view[:n]), view[n:]


def tensor_from_bytes(name: str, raw: memoryview, dtype: np.dtype, shape: Sequence[int],
                      bound: int) -> np.ndarray:
    """The array of ``shape`` and ``dtype`` held by ``raw``, which must be exactly
    ``prod(shape) * itemsize`` bytes (``bound`` bytes at most: 413 beyond)."""
    nbytes = math.prod(shape) * dtype.itemsize
    if len(raw) > bound or nbytes > bound:
        raise InputTooLargeError(
            f"input {name!r}: binary data of {max(len(raw), nbytes)} bytes is over the "
            f"{bound}-byte limit for this input")
    if len(raw) != nbytes:
        raise PredictError(
            f"input {name!r}: binary_data_size is {len(raw)} bytes; shape {list(shape)} of "
            f"{dtype.name} takes {nbytes}")
    if dtype.kind == "b":
        octets = np.frombuffer(raw, dtype=np.uint8)
        if octets.size and octets.max() > 1:
            raise PredictError(f"input {name!r}: BOOL data has bytes other than 0 and 1")
        arr = octets.view(np.bool_)
    else:
        arr = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
        if arr.dtype.byteorder not in "=|":  # a big-endian host: native order for ORT
            arr = arr.astype(dtype)
    arr = arr.reshape(tuple(shape))
    return arr if arr.flags.aligned else arr.copy()


def tensor_bytes(arr: np.ndarray) -> bytes:
    """The raw data of an output: row-major, little-endian, BOOL as 0/1 bytes."""
    if arr.dtype.kind == "b":
        return np.ascontiguousarray(arr).view(np.uint8).tobytes()
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def join_body(header: bytes, blobs: Sequence[bytes]) -> bytes:
    """A response body: the JSON header, then each binary output in header order."""
    return b"".join((header, *blobs)) if blobs else header
