"""Uploaded bundles: stream to a temp file under a size cap, verify, then store by sha256."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

from starlette.concurrency import run_in_threadpool

from fleet_server.datadir import DataDir
from fleet_server.errors import BundleRejectedError, PayloadTooLargeError
from fleet_server.registry import Registry, Row
from fleet_server.trust import trusted_publisher_keys
from model_bundles.errors import BundleError
from model_bundles.verify import verify_bundle
from ota.chunks import file_chunk_hashes
from ota.limits import DEFAULT_CHUNK_SIZE

WRITE_BATCH = 1024 * 1024
"""Upload bytes collected before one hash-and-write step in a worker thread."""


def _flush(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


class BundleStore:
    """Accepts uploads, verifies them against registered publishers, records them."""

    def __init__(self, *, data_dir: DataDir, registry: Registry, max_bytes: int) -> None:
        self._dir = data_dir
        self._registry = registry
        self._max = max_bytes

    async def receive(self, chunks: AsyncIterator[bytes]) -> tuple[Row, bool]:
        """Store an uploaded bundle; returns (bundle row, created)."""
        incoming = self._dir.bundles_dir
        fd, tmp_name = tempfile.mkstemp(dir=incoming, prefix=".upload-", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            size = 0
            pending: list[bytes] = []
            pending_size = 0

            def write(f: BinaryIO, parts: list[bytes]) -> None:
                for part in parts:
                    digest.update(part)
                    f.write(part)

            with os.fdopen(fd, "wb") as f:
                # Network reads stay on the event loop; hashing and disk writes go to a worker
                # thread a megabyte at a time, so a large upload never stalls HTTP or the broker.
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self._max:
                        raise PayloadTooLargeError(
                            f"bundle exceeds the upload limit of {self._max} bytes")
                    pending.append(chunk)
                    pending_size += len(chunk)
                    if pending_size >= WRITE_BATCH:
                        await run_in_threadpool(write, f, pending)
                        pending, pending_size = [], 0
                await run_in_threadpool(write, f, pending)
                await run_in_threadpool(_flush, f)
            if size == 0:
                raise BundleRejectedError("empty upload: send the .efb bytes as the request body")
            return await run_in_threadpool(self._accept, tmp, digest.hexdigest(), size)
        finally:
            tmp.unlink(missing_ok=True)

    def _accept(self, tmp: Path, sha256: str, size: int) -> tuple[Row, bool]:
        trusted = trusted_publisher_keys(self._registry.list_publishers())
        try:
            verified = verify_bundle(tmp, trusted)
        except BundleError as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BundleRejectedError(f"bundle rejected: {reason}") from e
        manifest = _manifest_as_dict(verified)
        hashes = list(file_chunk_hashes(tmp, DEFAULT_CHUNK_SIZE))
        final = self._dir.bundle_path(sha256)
        placed = not final.exists()
        if placed:
            os.replace(tmp, final)  # file first, row second: a row never lacks its bytes
        try:
            return self._registry.add_bundle(
                sha256=sha256, name=str(manifest["name"]), version=str(manifest["version"]),
                size=size, publisher_key_id=str(verified.key_id), manifest=manifest,
                chunk_size=DEFAULT_CHUNK_SIZE, chunk_hashes=hashes)
        except BaseException:
            if placed:
                final.unlink(missing_ok=True)
            raise


def _manifest_as_dict(verified: Any) -> dict[str, Any]:
    return dict(json.loads(bytes(verified.manifest_bytes)))
