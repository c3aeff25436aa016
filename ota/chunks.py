"""Chunk transfer: hashing and reading chunks, binary chunk frames, and the resumable
``ChunkAssembler`` (the only file I/O in ``ota``).

Frame: ``b"EFC1"`` + 2-byte big-endian header length + JSON header
``{"sha256": hex, "index": i, "total": n}`` + the chunk bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from ota.errors import ChunkError, ProtocolError
from ota.instructions import chunk_count
from ota.limits import MAX_FRAME_HEADER
from ota.model import Count, Model, PositiveCount, Sha256, load_json, validate

MAGIC = b"EFC1"
_HEADER_LEN = struct.Struct(">H")
_READ_BLOCK = 1024 * 1024


def file_chunk_hashes(path: Path | str, chunk_size: int) -> list[str]:
    """SHA-256 hex of each ``chunk_size`` piece of the file (memory: one chunk)."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    hashes: list[str] = []
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            hashes.append(hashlib.sha256(chunk).hexdigest())
    return hashes


def read_chunk(path: Path | str, index: int, chunk_size: int) -> bytes:
    """Chunk ``index`` of the file; ``ChunkError`` if it lies beyond the end."""
    if index < 0 or chunk_size < 1:
        raise ChunkError(f"chunk index {index} / chunk size {chunk_size} out of range")
    with open(path, "rb") as f:
        f.seek(index * chunk_size)
        data = f.read(chunk_size)
    if not data:
        raise ChunkError(f"chunk {index} lies beyond the end of {Path(path).name}")
    return data


def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            h.update(block)
    return h.hexdigest()


def request_ranges(indexes: Iterable[int]) -> list[tuple[int, int]]:
    """Group chunk indexes into ``(index, count)`` runs for ``ChunkRequest`` messages."""
    runs: list[tuple[int, int]] = []
    for i in sorted(set(indexes)):
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


class ChunkHeader(Model, frozen=True):
    """The JSON header of a binary chunk frame: which chunk of which bundle."""

    WHAT: ClassVar[str] = "chunk header"
    ERROR: ClassVar[type[ProtocolError]] = ChunkError

    sha256: Sha256
    index: Count
    total: PositiveCount

    def check(self) -> None:
        if self.index >= self.total:
            raise ValueError(f"chunk index {self.index} out of range (total {self.total})")


def encode_chunk_frame(sha256: str, index: int, total: int, data: bytes) -> bytes:
    """A binary chunk frame for the device's ``chunks`` topic."""
    header = ChunkHeader(sha256, index, total)
    raw = json.dumps(
        {"sha256": header.sha256, "index": header.index, "total": header.total},
        sort_keys=True,
        separators=(",", ":"),
    ).encode("ascii")
    return MAGIC + _HEADER_LEN.pack(len(raw)) + raw + bytes(data)


def decode_chunk_frame(payload: bytes, max_chunk_size: int) -> tuple[ChunkHeader, bytes]:
    """Split a frame into header and data; ``ChunkError`` for anything malformed or too long."""
    payload = bytes(payload)
    prefix = len(MAGIC) + _HEADER_LEN.size
    if len(payload) < prefix or payload[: len(MAGIC)] != MAGIC:
        raise ChunkError("not a chunk frame (bad magic or truncated)")
    (header_len,) = _HEADER_LEN.unpack_from(payload, len(MAGIC))
    if header_len > MAX_FRAME_HEADER:
        raise ChunkError(f"chunk frame header of {header_len} bytes exceeds {MAX_FRAME_HEADER}")
    if len(payload) < prefix + header_len:
        raise ChunkError("chunk frame truncated inside its header")
    try:
        obj = load_json(payload[prefix : prefix + header_len], max_size=MAX_FRAME_HEADER,
                        what="chunk frame header")
        header = validate(ChunkHeader, obj, "chunk header")
    except ProtocolError as e:
        raise ChunkError(str(e)) from e
    data = payload[prefix + header_len :]
    if len(data) > max_chunk_size:
        raise ChunkError(f"chunk of {len(data)} bytes exceeds limit {max_chunk_size}")
    if not data:
        raise ChunkError("chunk frame carries no data")
    return header, data


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class _Bundle(Model, frozen=True):
    """What a ``ChunkAssembler`` is told about its bundle (checked before any file I/O)."""

    WHAT: ClassVar[str] = "chunk assembler"

    sha256: Sha256
    size: PositiveCount
    chunk_size: PositiveCount


class ChunkAssembler:
    """Writes verified chunks of one bundle into ``part_path`` (a sparse file of the full
    size) and records which it has in ``<part_path>.have``, so a restart resumes.

    Each chunk is checked against its signed hash before it is written; the data is
    fsynced before the bitmap that names it is replaced atomically. A leftover part whose
    bitmap does not describe this same bundle is thrown away and the download starts over.
    """

    def __init__(
        self,
        part_path: Path,
        *,
        sha256: str,
        size: int,
        chunk_size: int,
        chunk_hashes: Iterable[str],
    ) -> None:
        hashes = tuple(chunk_hashes)
        _Bundle(sha256, size, chunk_size)
        if len(hashes) != chunk_count(size, chunk_size):
            raise ProtocolError(
                f"{len(hashes)} chunk hashes for size {size} in chunks of {chunk_size}"
            )
        self.part_path = Path(part_path)
        self.have_path = self.part_path.with_name(self.part_path.name + ".have")
        self.sha256 = sha256
        self.size = size
        self.chunk_size = chunk_size
        self.chunk_hashes = hashes
        self._have = self._load_or_start()

    # ---- persistence ------------------------------------------------------------------------

    def _identity(self) -> dict[str, object]:
        return {
            "sha256": self.sha256,
            "size": self.size,
            "chunk_size": self.chunk_size,
            "count": len(self.chunk_hashes),
        }

    def _load_or_start(self) -> bytearray:
        count = len(self.chunk_hashes)
        have = self._load_have(count)
        if have is not None:
            return have
        self.part_path.parent.mkdir(parents=True, exist_ok=True)
        self.have_path.unlink(missing_ok=True)
        with open(self.part_path, "wb") as f:
            f.truncate(self.size)
            os.fsync(f.fileno())
        have = bytearray((count + 7) // 8)
        self._save_have(have)
        return have

    def _load_have(self, count: int) -> bytearray | None:
        try:
            if self.part_path.stat().st_size != self.size:
                return None
            obj = json.loads(self.have_path.read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(obj, dict) or any(obj.get(k) != v for k, v in self._identity().items()):
            return None
        try:
            have = bytearray(bytes.fromhex(obj.get("have", "")))
        except (TypeError, ValueError):
            return None
        return have if len(have) == (count + 7) // 8 else None

    def _save_have(self, have: bytearray) -> None:
        record = {**self._identity(), "have": have.hex()}
        _atomic_write(self.have_path, json.dumps(record, sort_keys=True).encode("ascii"))

    # ---- state ------------------------------------------------------------------------------

    def has(self, index: int) -> bool:
        return bool(self._have[index // 8] & (1 << (index % 8)))

    @property
    def count(self) -> int:
        return len(self.chunk_hashes)

    def chunk_length(self, index: int) -> int:
        """Declared length of chunk ``index`` (the last one may be short)."""
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def missing(self) -> list[int]:
        return [i for i in range(self.count) if not self.has(i)]

    def next_request(self, window: int) -> list[int]:
        """The first ``window`` missing chunk indexes."""
        out: list[int] = []
        for i in range(self.count):
            if len(out) >= window:
                break
            if not self.has(i):
                out.append(i)
        return out

    @property
    def complete(self) -> bool:
        return all(self.has(i) for i in range(self.count))

    @property
    def progress(self) -> float:
        got = sum(1 for i in range(self.count) if self.has(i))
        return got / self.count

    # ---- actions ----------------------------------------------------------------------------

    def accept(self, index: int, data: bytes) -> bool:
        """Check and write chunk ``index``; ``False`` if it was already written.

        ``ChunkError`` (and nothing written) if the index is out of range, the length is not
        the declared one, or the hash is not ``chunk_hashes[index]``.
        """
        if type(index) is not int or not 0 <= index < self.count:
            raise ChunkError(f"chunk index {index!r} out of range (0..{self.count - 1})")
        expected_len = self.chunk_length(index)
        if len(data) != expected_len:
            raise ChunkError(f"chunk {index} has {len(data)} bytes, expected {expected_len}")
        if hashlib.sha256(data).hexdigest() != self.chunk_hashes[index]:
            raise ChunkError(f"chunk {index} does not match its signed hash")
        if self.has(index):
            return False
        fd = os.open(self.part_path, os.O_WRONLY)
        try:
            written = os.pwrite(fd, data, index * self.chunk_size)
            if written != len(data):
                raise OSError(f"short write of chunk {index} ({written}/{len(data)} bytes)")
            os.fsync(fd)
        finally:
            os.close(fd)
        have = bytearray(self._have)
        have[index // 8] |= 1 << (index % 8)
        self._save_have(have)
        self._have = have
        return True

    def finalize(self, dest: Path) -> Path:
        """Check the whole file's size and SHA-256, then move it to ``dest``.

        ``ChunkError`` on mismatch, after deleting the part and its bitmap. Calling this
        before ``complete`` is a bug (``RuntimeError``).
        """
        if not self.complete:
            raise RuntimeError(f"finalize with {len(self.missing())} chunks still missing")
        size = self.part_path.stat().st_size
        digest = file_sha256(self.part_path)
        if size != self.size or digest != self.sha256:
            self.discard()
            raise ChunkError(
                f"assembled file has size {size} and sha256 {digest[:16]}..., "
                f"expected {self.size} and {self.sha256[:16]}..."
            )
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.part_path, dest)
        _fsync_dir(dest.parent)
        self.have_path.unlink(missing_ok=True)
        return dest

    def discard(self) -> None:
        """Delete the part file and its bitmap (idempotent)."""
        self.part_path.unlink(missing_ok=True)
        self.have_path.unlink(missing_ok=True)
        self.have_path.with_name(self.have_path.name + ".tmp").unlink(missing_ok=True)
        self._have = bytearray(len(self._have))
