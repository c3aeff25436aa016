"""Rebuild bundle N+1 from a delta and bundle N's files, byte for byte, or refuse.

Order: the delta's signature over its description (before parsing it), that it is a delta
from the base the caller holds (``base_sha256``), each base file's size and SHA-256 as the
description lists them (from N's signed manifest), then the segments written in order while
the payload and the output are hashed; the output counts only if its size and SHA-256 are
the target's. ``apply_delta`` writes a temporary file beside the destination and renames it
into place only then; on any failure nothing is left. The caller still verifies the rebuilt
bundle like any downloaded one (publisher signature, manifest, every file hash).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .delta_format import BaseFile, Delta, DeltaError, Header, TrustedKeys, read_header
from .reader import open_bundle_file

__all__ = ["BaseOpener", "apply_delta", "apply_delta_stream", "slot_opener"]

BLOCK = 1 << 20
BaseOpener = Callable[[BaseFile], BinaryIO]
"""Opens a base file (``BaseFile.path``) for reading; ``OSError`` when it is missing."""


def _check_base(fh: BinaryIO, f: BaseFile) -> None:
    h, size = hashlib.sha256(), 0
    while block := fh.read(BLOCK):
        h.update(block)
        size += len(block)
    if size != f.size or h.hexdigest() != f.sha256:
        raise DeltaError(f"base file {f.path} does not match the delta's base "
                         f"(size {size}, sha256 {h.hexdigest()[:16]}; "
                         f"want {f.size}, {f.sha256[:16]})")


def _copy(src: BinaryIO, length: int, out: BinaryIO, digest: hashlib._Hash,
          *also: hashlib._Hash) -> None:
    while length:
        block = src.read(min(BLOCK, length))
        if not block:
            raise DeltaError("delta or base file ended early")
        length -= len(block)
        digest.update(block)
        for h in also:
            h.update(block)
        out.write(block)


def _zeros(length: int, out: BinaryIO, digest: hashlib._Hash) -> None:
    block = bytes(min(BLOCK, length))
    while length:
        n = min(len(block), length)
        digest.update(block[:n])
        out.write(block[:n])
        length -= n


def apply_delta_stream(fh: BinaryIO, size: int, open_base: BaseOpener, out: BinaryIO,
                       trusted: TrustedKeys, *, base_sha256: str | None = None) -> Header:
    """Write the target's bytes to ``out`` from the delta open on ``fh`` (``size`` bytes);
    ``DeltaError`` for any refusal (the bytes written to ``out`` are then worthless)."""
    fh.seek(0)
    header = read_header(fh, size, trusted)
    d: Delta = header.delta
    if base_sha256 is not None and d.base_sha256 != base_sha256:
        raise DeltaError(f"delta is from {d.name}@{d.base_version} ({d.base_sha256[:16]}), "
                         f"this base is {base_sha256[:16]}")
    with contextlib.ExitStack() as stack:
        bases: list[BinaryIO] = []
        for f in d.base_files:
            try:
                bf = stack.enter_context(open_base(f))
            except OSError as e:
                raise DeltaError(f"base file {f.path} is missing: {e}") from None
            _check_base(bf, f)
            bases.append(bf)
        out_hash, payload_hash = hashlib.sha256(), hashlib.sha256()
        for seg in d.segments:
            if seg[0] == 0:
                _copy(fh, seg[1], out, out_hash, payload_hash)
            elif seg[0] == 2:
                _zeros(seg[1], out, out_hash)
            else:
                src = bases[seg[1]]
                src.seek(seg[2])
                _copy(src, seg[3], out, out_hash)
    if payload_hash.hexdigest() != d.payload_sha256:
        raise DeltaError("delta payload does not match its SHA-256")
    if out_hash.hexdigest() != d.target_sha256:
        raise DeltaError(f"rebuilt {d.name}@{d.target_version} has sha256 "
                         f"{out_hash.hexdigest()[:16]}, the target is {d.target_sha256[:16]}")
    return header


def slot_opener(files_dir: Path) -> BaseOpener:
    """Base files from an installed slot's ``files/`` directory (regular files only)."""
    def open_base(f: BaseFile) -> BinaryIO:
        return open_bundle_file(files_dir / f.path)
    return open_base


def apply_delta(delta_path: Path, open_base: BaseOpener, out: Path, trusted: TrustedKeys, *,
                base_sha256: str | None = None, target_sha256: str | None = None,
                target_size: int | None = None) -> Header:
    """Rebuild the target into ``out`` atomically (temp file beside it, fsync, rename).
    ``target_sha256``/``target_size``: what the caller was told to expect (the signed
    instruction's bundle); a delta for another target is refused before anything is read."""
    out = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with open(delta_path, "rb") as fh, os.fdopen(fd, "wb") as w:
            size = os.fstat(fh.fileno()).st_size
            header = read_header(fh, size, trusted)
            d = header.delta
            if target_sha256 is not None and (d.target_sha256, d.target_size) != (
                    target_sha256, target_size if target_size is not None else d.target_size):
                raise DeltaError(f"delta rebuilds {d.target_sha256[:16]} ({d.target_size} "
                                 f"bytes), the instruction asks for {target_sha256[:16]}")
            apply_delta_stream(fh, size, open_base, w, trusted, base_sha256=base_sha256)
            w.flush()
            os.fsync(w.fileno())
        os.replace(tmp, out)
        return header
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
