"""Where an ONNX file keeps its initializers' bytes: a protobuf wire-format walk.

A delta (``delta_build.py``) copies unchanged initializers from the base model by byte
range, so it needs the exact offset of each initializer's ``raw_data`` in the file, which
the ``onnx`` package (a parse into messages) cannot give. This reads only the wire format
(varint tags and lengths) of ``ModelProto.graph`` (field 7) -> ``GraphProto.initializer``
(field 5) -> ``TensorProto.name`` (8) and ``raw_data`` (9); every other byte of the file is
"framing" to the delta. It never decodes a tensor and never re-encodes anything: a delta
splices original bytes, so a model it cannot walk is still rebuilt exactly, only with
fewer ranges copied (docs/adr/0005-tensor-level-deltas.md).

Pure and bounded: a malformed file gives ``OnnxWalkError``, nothing more.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["OnnxWalkError", "TensorSpan", "initializer_spans"]

_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_NAME = 8
_TENSOR_RAW_DATA = 9
MAX_TENSORS = 1 << 20


class OnnxWalkError(ValueError):
    """The bytes are not the protobuf wire format this walk expects."""


@dataclass(frozen=True)
class TensorSpan:
    """One initializer's ``raw_data``: ``data[offset:offset + size]`` of the file."""

    name: str
    offset: int
    size: int


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise OnnxWalkError(f"truncated or overlong varint at byte {pos}")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(field_number, wire_type, value_start, value_end)`` of one message; for
    varint and fixed fields the value span is their encoded bytes."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise OnnxWalkError(f"field number 0 at byte {pos}")
        if wire == 0:
            _, nxt = _varint(data, pos, end)
        elif wire == 1:
            nxt = pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            nxt = pos + length
        elif wire == 5:
            nxt = pos + 4
        else:  # groups (3, 4) are not used by ONNX
            raise OnnxWalkError(f"unsupported wire type {wire} at byte {pos}")
        if nxt > end:
            raise OnnxWalkError(f"field {number} runs past its message at byte {pos}")
        yield number, wire, pos, nxt
        pos = nxt


def _tensor(data: bytes, start: int, end: int) -> TensorSpan | None:
    name: str | None = None
    raw: tuple[int, int] | None = None
    for number, wire, lo, hi in _fields(data, start, end):
        if wire != 2:
            continue
        if number == _TENSOR_NAME:
            try:
                name = data[lo:hi].decode("utf-8")
            except UnicodeDecodeError as e:
                raise OnnxWalkError(f"initializer name at byte {lo} is not UTF-8") from e
        elif number == _TENSOR_RAW_DATA:
            raw = (lo, hi)
    if name is None or raw is None:
        return None  # typed fields (float_data, ...) or unnamed: left to the framing
    return TensorSpan(name, raw[0], raw[1] - raw[0])


def initializer_spans(data: bytes) -> list[TensorSpan]:
    """The ``raw_data`` span of every named initializer of the main graph, in file order."""
    out: list[TensorSpan] = []
    for number, wire, lo, hi in _fields(data, 0, len(data)):
        if number != _MODEL_GRAPH or wire != 2:
            continue
        for gnum, gwire, glo, ghi in _fields(data, lo, hi):
            if gnum != _GRAPH_INITIALIZER or gwire != 2:
                continue
            span = _tensor(data, glo, ghi)
            if span is not None:
                out.append(span)
                if len(out) > MAX_TENSORS:
                    raise OnnxWalkError(f"more than {MAX_TENSORS} initializers")
    return out
