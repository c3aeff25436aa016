"""The hot messages declared as ``msgspec.Struct``s, with the same limits as ``ota``'s models,
for ``bench.payloads`` only (msgspec is not a dependency of edgefleet)."""

# No ``from __future__ import annotations``: msgspec resolves these at class creation.
import importlib
from typing import Annotated, Any

# Imported by name: msgspec is optional here and no dependency of edgefleet (deptry reads
# import statements only); ImportError when it is absent, and bench.payloads skips it.
msgspec = importlib.import_module("msgspec")
Meta, Struct = msgspec.Meta, msgspec.Struct

Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Positive = Annotated[int, Meta(ge=1, le=2**63 - 1)]
Number = Annotated[float, Meta(ge=0.0)]
Sha = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]
DeviceId = Annotated[str, Meta(pattern="^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Protocol = Annotated[int, Meta(ge=1, le=1)]
Text64 = Annotated[str, Meta(min_length=1, max_length=64)]
Text128 = Annotated[str, Meta(min_length=1, max_length=128)]
Text256 = Annotated[str, Meta(min_length=1, max_length=256)]
Text512 = Annotated[str, Meta(min_length=1, max_length=512)]
Text4096 = Annotated[str, Meta(min_length=1, max_length=4096)]


class Lat(Struct, frozen=True):
    p50: Number
    p95: Number
    p99: Number


class Tel(Struct, frozen=True):
    protocol: Protocol
    device_id: DeviceId
    seq: Count
    ts: Number
    window_s: Number
    bundle: Text512 | None
    delegate: Text256 | None
    inferences: Count
    errors: Count
    total_inferences: Count
    total_errors: Count
    latency_ms: Lat | None = None
    variant: Text256 | None = None
    fallback: bool | None = None


class Ref(Struct, frozen=True):
    name: Annotated[str, Meta(pattern="^[a-z0-9][a-z0-9._-]{0,63}$")]
    version: Text64
    sha256: Sha
    size: Positive
    chunk_size: Positive
    chunk_hashes: tuple[Sha, ...]
    publisher_key_id: Sha
    publisher_public_key: Text4096

    def __post_init__(self) -> None:
        if len(self.chunk_hashes) != -(-self.size // self.chunk_size):
            raise ValueError("bundle.chunk_hashes does not match size / chunk_size")


class Instr(Struct, frozen=True):
    protocol: Protocol
    device_id: DeviceId
    seq: Positive
    issued_at: Number
    expires_at: Number
    deployment_id: Text128 | None
    bundle: Ref | None
    shadow: Ref | None = None
    shadow_sample_rate: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.0


class Header(Struct, frozen=True):
    sha256: Sha
    index: Count
    total: Positive


_TEL = msgspec.json.Decoder(Tel)
_INSTR = msgspec.json.Decoder(Instr)
_HEADER = msgspec.json.Decoder(Header)


def _frame(payload: bytes) -> Any:
    n = int.from_bytes(payload[4:6], "big")
    header = _HEADER.decode(payload[6:6 + n])
    if header.index >= header.total:
        raise ValueError("chunk index out of range")
    return header, payload[6 + n:]


PARSERS = {
    "telemetry": lambda batch: [_TEL.decode(b) for b in batch],
    "instruction": _INSTR.decode,
    "frame": _frame,
}
