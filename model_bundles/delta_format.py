"""The delta file (``.efd``): how to rebuild bundle N+1's exact bytes from bundle N's files.

Layout (docs/bundle-format.md, "Deltas"): ``b"EFD1"``, a 4-byte big-endian length and the
description (canonical JSON), a 4-byte length and its signature envelope (the same
Ed25519 envelope as ``manifest.sig``, over the description bytes as stored), then the
payload: the bytes the base does not have, consumed in order by the segments.

The description lists the target ``.efb`` as segments, in order: ``[0, length]`` takes the
next ``length`` payload bytes, ``[1, file, offset, length]`` copies a byte range of the
base bundle's file ``base_files[file]`` (whose SHA-256 the rebuild checks first), ``[2,
length]`` writes zero bytes (tar padding and trailer). Pure:
bytes in, values out; ``DeltaError`` for anything malformed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import BundleError
from .manifest import (
    canonical_json,
    check_safe_path,
    parse_canonical_json,
    validate_key_id,
    validate_name,
    validate_version,
)
from .signing import SignatureEnvelope, sign_manifest, trusted_key_map

__all__ = ["DELTA_FORMAT", "MAGIC", "BaseFile", "Delta", "DeltaError", "Segment",
           "Header", "encode_delta", "read_header", "read_unverified", "sign_description"]

MAGIC = b"EFD1"
DELTA_FORMAT = 1
MAX_DESCRIPTION_BYTES = 16 * 1024 * 1024
MAX_SIGNATURE_BYTES = 4096
MAX_SEGMENTS = 1 << 20
MAX_BASE_FILES = 1024
MAX_CHANGED_TENSORS = 1 << 16
_LEN = struct.Struct(">I")
TrustedKeys = Iterable[Ed25519PublicKey] | Mapping[str, Ed25519PublicKey]


class DeltaError(BundleError):
    """A delta that is malformed, unsigned, for another base, or does not rebuild its target."""

    reason = "bad delta"


Segment = tuple[int, ...]
"""``(0, length)``: payload bytes; ``(1, file, offset, length)``: a base file's byte range;
``(2, length)``: zero bytes (tar padding)."""


@dataclass(frozen=True)
class BaseFile:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Delta:
    """The parsed description. ``files`` is the per-file summary shown by ``inspect``
    (``how``: ``same``, ``tensors`` or ``new``; changed tensors by name and SHA-256)."""

    name: str
    base_version: str
    base_sha256: str
    target_version: str
    target_sha256: str
    target_size: int
    payload_sha256: str
    payload_size: int
    base_files: tuple[BaseFile, ...]
    segments: tuple[Segment, ...]
    files: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": DELTA_FORMAT,
            "name": self.name,
            "base": {"version": self.base_version, "sha256": self.base_sha256},
            "target": {"version": self.target_version, "sha256": self.target_sha256,
                       "size": self.target_size},
            "payload": {"sha256": self.payload_sha256, "size": self.payload_size},
            "base_files": [{"path": f.path, "sha256": f.sha256, "size": f.size}
                           for f in self.base_files],
            "segments": [list(s) for s in self.segments],
            "files": list(self.files),
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> Delta:
        try:
            obj = parse_canonical_json(data, "delta description")
            return _parse(obj)
        except DeltaError:
            raise
        except BundleError as e:
            raise DeltaError(str(e)) from None
        except (KeyError, TypeError, ValueError) as e:
            raise DeltaError(f"delta description: {e!r}") from None


def _int(v: Any, what: str, lo: int = 0) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or v >= 1 << 63:
        raise DeltaError(f"{what} must be an integer >= {lo}, got {v!r}")
    return v


def _obj(v: Any, keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(v, dict) or set(v) != keys:
        raise DeltaError(f"{what} must be an object with keys {sorted(keys)}")
    return v


def _parse(obj: Any) -> Delta:
    top = _obj(obj, {"format_version", "name", "base", "target", "payload", "base_files",
                     "segments", "files"}, "delta description")
    if top["format_version"] != DELTA_FORMAT or isinstance(top["format_version"], bool):
        raise DeltaError(f"unsupported delta format_version {top['format_version']!r}")
    base = _obj(top["base"], {"version", "sha256"}, "base")
    target = _obj(top["target"], {"version", "sha256", "size"}, "target")
    payload = _obj(top["payload"], {"sha256", "size"}, "payload")
    raw_files, raw_segments = top["base_files"], top["segments"]
    if not isinstance(raw_files, list) or len(raw_files) > MAX_BASE_FILES:
        raise DeltaError(f"base_files must be a list of at most {MAX_BASE_FILES}")
    if not isinstance(raw_segments, list) or len(raw_segments) > MAX_SEGMENTS:
        raise DeltaError(f"segments must be a list of at most {MAX_SEGMENTS}")
    files = tuple(BaseFile(check_safe_path(f["path"]), validate_key_id(f["sha256"], "sha256"),
                           _int(f["size"], "base_files[].size"))
                  for f in (_obj(x, {"path", "sha256", "size"}, "base_files[]")
                            for x in raw_files))
    delta = Delta(
        name=validate_name(top["name"]), base_version=validate_version(base["version"]),
        base_sha256=validate_key_id(base["sha256"], "base.sha256"),
        target_version=validate_version(target["version"]),
        target_sha256=validate_key_id(target["sha256"], "target.sha256"),
        target_size=_int(target["size"], "target.size", 1),
        payload_sha256=validate_key_id(payload["sha256"], "payload.sha256"),
        payload_size=_int(payload["size"], "payload.size"),
        base_files=files, segments=tuple(_segment(s, files) for s in raw_segments),
        files=_summary(top["files"]))
    covered = sum(s[-1] for s in delta.segments)
    from_payload = sum(s[1] for s in delta.segments if s[0] == 0)
    if covered != delta.target_size:
        raise DeltaError(f"segments cover {covered} bytes, the target has {delta.target_size}")
    if from_payload != delta.payload_size:
        raise DeltaError(f"segments take {from_payload} payload bytes, "
                         f"the payload has {delta.payload_size}")
    return delta


def _segment(s: Any, files: tuple[BaseFile, ...]) -> Segment:
    if isinstance(s, list) and len(s) == 2 and s[0] in (0, 2):
        return (int(s[0]), _int(s[1], "segment length", 1))
    if isinstance(s, list) and len(s) == 4 and s[0] == 1:
        index = _int(s[1], "segment file")
        offset, length = _int(s[2], "segment offset"), _int(s[3], "segment length", 1)
        if index >= len(files) or offset + length > files[index].size:
            raise DeltaError(f"segment {s!r} reads outside the base files")
        return (1, index, offset, length)
    raise DeltaError(f"malformed segment {str(s)[:80]}")


def _summary(v: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(v, list) or len(v) > MAX_BASE_FILES:
        raise DeltaError(f"files must be a list of at most {MAX_BASE_FILES}")
    for f in v:
        entry = _obj(f, {"path", "how", "size", "changed_tensors", "kept_tensors"}, "files[]")
        check_safe_path(entry["path"])
        if entry["how"] not in ("same", "tensors", "new"):
            raise DeltaError(f"files[].how must be same, tensors or new, got {entry['how']!r}")
        _int(entry["size"], "files[].size")
        _int(entry["kept_tensors"], "files[].kept_tensors")
        changed = entry["changed_tensors"]
        if not isinstance(changed, list) or len(changed) > MAX_CHANGED_TENSORS:
            raise DeltaError("files[].changed_tensors must be a list")
        for t in changed:
            _obj(t, {"name", "sha256", "size"}, "changed_tensors[]")
    return tuple(v)


# -- the container ---------------------------------------------------------------------------


def sign_description(description: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """The signature envelope over the stored description bytes (as ``manifest.sig``)."""
    return sign_manifest(description, private_key)


def encode_delta(description: bytes, signature: bytes, payload: bytes) -> bytes:
    return (MAGIC + _LEN.pack(len(description)) + description
            + _LEN.pack(len(signature)) + signature + payload)


@dataclass(frozen=True)
class Header:
    delta: Delta
    description: bytes
    key_id: str
    payload_offset: int


def read_header(fh: BinaryIO, file_size: int, trusted: TrustedKeys) -> Header:
    """Read and authenticate the start of a delta file open on ``fh`` (at offset 0). The
    signature is checked over the description bytes as stored before they are parsed."""
    if fh.read(4) != MAGIC:
        raise DeltaError("not a delta file (no EFD1 magic)")
    description = _block(fh, MAX_DESCRIPTION_BYTES, "description")
    signature = _block(fh, MAX_SIGNATURE_BYTES, "signature")
    envelope = SignatureEnvelope.from_bytes(signature)
    key = trusted_key_map(trusted).get(envelope.key_id)
    if key is None:
        raise DeltaError(f"delta signed by {envelope.key_id[:16]}, not a trusted key")
    try:
        key.verify(envelope.signature, description)
    except InvalidSignature:
        raise DeltaError(f"signature by {envelope.key_id[:16]} does not verify over the "
                         "delta description") from None
    delta = Delta.from_bytes(description)
    payload_offset = 12 + len(description) + len(signature)
    if file_size != payload_offset + delta.payload_size:
        raise DeltaError(f"delta file is {file_size} bytes, its description says "
                         f"{payload_offset + delta.payload_size}")
    return Header(delta, description, envelope.key_id, payload_offset)


def read_unverified(fh: BinaryIO) -> tuple[Delta, str | None]:
    """The description and the envelope's key id, NOT verified (for ``inspect``)."""
    if fh.read(4) != MAGIC:
        raise DeltaError("not a delta file (no EFD1 magic)")
    description = _block(fh, MAX_DESCRIPTION_BYTES, "description")
    signature = _block(fh, MAX_SIGNATURE_BYTES, "signature")
    try:
        signer: str | None = SignatureEnvelope.from_bytes(signature).key_id
    except BundleError:
        signer = None
    return Delta.from_bytes(description), signer


def _block(fh: BinaryIO, limit: int, what: str) -> bytes:
    raw = fh.read(4)
    if len(raw) != 4:
        raise DeltaError(f"delta file is truncated before its {what}")
    (n,) = _LEN.unpack(raw)
    if n > limit:
        raise DeltaError(f"delta {what} is {n} bytes (limit {limit})")
    data = fh.read(n)
    if len(data) != n:
        raise DeltaError(f"delta file is truncated in its {what}")
    return data
