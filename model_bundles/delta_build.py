"""Build a delta from bundle N to bundle N+1 of the same name (docs/bundle-format.md, "Deltas").

Every file of N+1 is matched against N's files: a file N holds with the same SHA-256 is
copied whole; an ONNX model is spliced at initializer level (an initializer whose bytes
N's model holds, under any name, is copied by byte range; changed ones travel in the
payload, listed by name and SHA-256; so does the framing between them unless N has the
same bytes); any other file travels whole. The tar headers, ``manifest.json`` and
``manifest.sig`` of N+1 travel as they are, so the rebuild reproduces N+1's bytes exactly.

Before it returns, the builder rebuilds N+1 from the delta itself (``delta_apply``) and
compares the result with N+1's SHA-256; a delta that does not reproduce it, or that is not
at most ``max_ratio`` of N+1's size, is declined (``DeltaDeclined``), never offered.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .delta_apply import BaseOpener, apply_delta_stream
from .delta_format import BaseFile, Delta, DeltaError, encode_delta, sign_description
from .delta_onnx import OnnxWalkError, TensorSpan, initializer_spans
from .manifest import Manifest
from .reader import Archive, open_archive, open_bundle_file

__all__ = ["DEFAULT_MAX_RATIO", "BuiltDelta", "DeltaDeclined", "base_opener", "build_delta"]

DEFAULT_MAX_RATIO = 0.9
"""A delta is offered only when it is at most this share of the full bundle: a device that
must fall back pays the delta and the bundle, so a delta that saves little is not worth it."""
MIN_COPY = 32
"""Framing shorter than this travels in the payload (a copy segment costs about as much)."""
_ZEROS = re.compile(rb"\x00{64,}")
"""Framing shorter than this travels in the payload (a copy segment costs about as much)."""


class DeltaDeclined(DeltaError):
    """No delta is offered for this pair (the reason says why); send the full bundle."""

    reason = "no delta"


@dataclass(frozen=True)
class BuiltDelta:
    data: bytes
    delta: Delta
    full_size: int

    @property
    def ratio(self) -> float:
        return len(self.data) / self.full_size


@dataclass
class _Bundle:
    data: bytes
    manifest: Manifest
    archive: Archive
    sha256: str

    def file_data(self, path: str) -> bytes:
        m = next((m for m in self.archive.file_members if m.path == path), None)
        if m is None:
            raise FileNotFoundError(f"the base bundle has no file {path}")
        return self.data[m.offset:m.offset + m.size]


def _load(path: Path) -> _Bundle:
    with open_bundle_file(path) as fh:
        archive = open_archive(fh)
        fh.seek(0)
        data = fh.read()
    return _Bundle(data, Manifest.from_bytes(archive.manifest_bytes), archive,
                   hashlib.sha256(data).hexdigest())


class _Plan:
    """Segments and payload under construction; adjacent pieces merge."""

    def __init__(self, base: _Bundle) -> None:
        self.base = base
        self.segments: list[list[int]] = []
        self.payload = bytearray()
        self.files: list[BaseFile] = []
        self._index: dict[str, int] = {}

    def literal(self, data: bytes) -> None:
        """Payload bytes, except runs of zeros (tar padding and trailer) which become
        zero segments."""
        pos = 0
        for run in _ZEROS.finditer(data):
            self._payload(data[pos:run.start()])
            self._zeros(run.end() - run.start())
            pos = run.end()
        self._payload(data[pos:])

    def _zeros(self, length: int) -> None:
        last = self.segments[-1] if self.segments else None
        if last is not None and last[0] == 2:
            last[1] += length
        else:
            self.segments.append([2, length])

    def _payload(self, data: bytes) -> None:
        if not data:
            return
        last = self.segments[-1] if self.segments else None
        if last is not None and last[0] == 0:
            last[1] += len(data)
        else:
            self.segments.append([0, len(data)])
        self.payload += data

    def copy(self, path: str, offset: int, length: int) -> None:
        if length <= 0:
            return
        index = self._index.get(path)
        if index is None:
            entry = next(e for e in self.base.manifest.files if e.path == path)
            index = self._index[path] = len(self.files)
            self.files.append(BaseFile(entry.path, entry.sha256, entry.size))
        last = self.segments[-1] if self.segments else None
        if last is not None and last[0] == 1 and last[1] == index and last[2] + last[3] == offset:
            last[3] += length
        else:
            self.segments.append([1, index, offset, length])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _splice_onnx(plan: _Plan, path: str, data: bytes, base_path: str) -> dict[str, Any] | None:
    """Plan an ONNX file tensor by tensor against the base model ``base_path``; None when
    either file cannot be walked (then it travels whole)."""
    base = plan.base.file_data(base_path)
    try:
        spans, base_spans = initializer_spans(data), initializer_spans(base)
    except OnnxWalkError:
        return None
    by_hash = {_sha(base[s.offset:s.offset + s.size]): s for s in base_spans}
    gaps: dict[str, tuple[int, int]] = {}
    pos = 0
    for b in [*base_spans, TensorSpan("", len(base), 0)]:
        if b.offset - pos >= MIN_COPY:
            gaps.setdefault(_sha(base[pos:b.offset]), (pos, b.offset - pos))
        pos = b.offset + b.size
    changed: list[dict[str, Any]] = []
    kept = pos = 0
    for s in [*spans, None]:
        end = len(data) if s is None else s.offset
        gap = data[pos:end]
        hit = gaps.get(_sha(gap)) if len(gap) >= MIN_COPY else None
        if hit is not None:
            plan.copy(base_path, *hit)
        else:
            plan.literal(gap)
        if s is None:
            break
        raw = data[s.offset:s.offset + s.size]
        digest = _sha(raw)
        same = by_hash.get(digest)
        if same is not None:
            plan.copy(base_path, same.offset, same.size)
            kept += 1
        else:
            plan.literal(raw)
            changed.append({"name": s.name, "sha256": digest, "size": s.size})
        pos = s.offset + s.size
    return {"path": path, "how": "tensors", "size": len(data), "changed_tensors": changed,
            "kept_tensors": kept}


def _base_model(base: _Bundle, path: str) -> str | None:
    """The base ONNX file to splice ``path`` against: the same path, else the base's only
    ONNX file."""
    onnx_files = [e.path for e in base.manifest.files if e.path.endswith(".onnx")]
    if path in onnx_files:
        return path
    return onnx_files[0] if len(onnx_files) == 1 else None


def _plan(base: _Bundle, target: _Bundle) -> tuple[_Plan, list[dict[str, Any]]]:
    plan = _Plan(base)
    by_sha = {e.sha256: e.path for e in base.manifest.files}
    entries = {e.path: e for e in target.manifest.files}
    summary: list[dict[str, Any]] = []
    pos = 0
    for member in sorted(target.archive.file_members, key=lambda m: m.offset):
        plan.literal(target.data[pos:member.offset])  # tar headers, manifest, signature
        entry = entries[member.path]
        data = target.data[member.offset:member.offset + member.size]
        same = by_sha.get(entry.sha256)
        base_model = _base_model(base, entry.path) if entry.path.endswith(".onnx") else None
        if same is not None:
            plan.copy(same, 0, entry.size)
            summary.append({"path": entry.path, "how": "same", "size": entry.size,
                            "changed_tensors": [], "kept_tensors": 0})
        elif base_model is not None and (s := _splice_onnx(plan, entry.path, data,
                                                           base_model)) is not None:
            summary.append(s)
        else:
            plan.literal(data)
            summary.append({"path": entry.path, "how": "new", "size": entry.size,
                            "changed_tensors": [], "kept_tensors": 0})
        pos = member.offset + member.size
    plan.literal(target.data[pos:])  # the tar trailer
    return plan, summary


def base_opener(path: Path) -> tuple[BaseOpener, str]:
    """Base files read from a base ``.efb`` (for ``verify --base``), and its SHA-256."""
    base = _load(path)
    return (lambda f: io.BytesIO(base.file_data(f.path))), base.sha256


def build_delta(base_path: Path, target_path: Path, key: Ed25519PrivateKey, *,
                max_ratio: float = DEFAULT_MAX_RATIO) -> BuiltDelta:
    """The signed delta that rebuilds ``target_path``'s bytes from ``base_path``'s files.

    ``DeltaDeclined`` when the two are not versions of one bundle name, when the delta
    would not be at most ``max_ratio`` of the target's size, or when rebuilding from it
    does not reproduce the target byte for byte. Other ``BundleError``s for unreadable
    bundles."""
    base, target = _load(base_path), _load(target_path)
    if base.manifest.name != target.manifest.name:
        raise DeltaDeclined(f"base is {base.manifest.name}, target is {target.manifest.name}: "
                            "a delta joins two versions of one bundle")
    if base.sha256 == target.sha256:
        raise DeltaDeclined("base and target are the same bytes")
    plan, summary = _plan(base, target)
    payload = bytes(plan.payload)
    delta = Delta(
        name=target.manifest.name, base_version=base.manifest.version,
        base_sha256=base.sha256, target_version=target.manifest.version,
        target_sha256=target.sha256, target_size=len(target.data),
        payload_sha256=_sha(payload), payload_size=len(payload),
        base_files=tuple(plan.files),
        segments=tuple(tuple(s) for s in plan.segments),
        files=tuple(summary))
    description = delta.to_bytes()
    data = encode_delta(description, sign_description(description, key), payload)
    limit = int(len(target.data) * max_ratio)
    if len(data) > limit:
        raise DeltaDeclined(
            f"the delta would be {len(data)} bytes, over {max_ratio:.0%} of the "
            f"{len(target.data)}-byte bundle: send the full bundle")
    _self_check(data, base, delta, key)
    return BuiltDelta(data, delta, len(target.data))


def _self_check(data: bytes, base: _Bundle, delta: Delta, key: Ed25519PrivateKey) -> None:
    """Rebuild the target from ``data`` exactly as a device would, and compare."""
    out = io.BytesIO()
    try:
        apply_delta_stream(io.BytesIO(data), len(data),
                           lambda f: io.BytesIO(base.file_data(f.path)), out,
                           [key.public_key()], base_sha256=base.sha256)
    except DeltaError as e:
        raise DeltaDeclined(f"the delta does not rebuild {delta.name}@"
                            f"{delta.target_version} exactly ({e})") from None

