"""Write a signed ``.efb`` bundle: deterministic tar members in the documented order,
written to a temporary file beside the target, fsynced and renamed into place."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .errors import BuildError, TooLargeError
from .keys import key_id as compute_key_id
from .limits import DEFAULT_LIMITS, BundleLimits
from .manifest import Manifest
from .reader import FILES_PREFIX, MANIFEST_NAME, SIGNATURE_NAME
from .signing import sign_manifest

_BLOCK = 512
_RECORD = 20 * _BLOCK


class _HashingReader:
    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.digest.update(data)
        self.count += len(data)
        return data


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _estimate_size(manifest_len: int, sig_len: int, sizes: list[int]) -> int:
    total = 0
    for size in [manifest_len, sig_len, *sizes]:
        total += 3 * _BLOCK + -(-size // _BLOCK) * _BLOCK  # header (+pax) + data
    total += 2 * _BLOCK
    return -(-total // _RECORD) * _RECORD


def write_bundle(
    out: Path,
    manifest: Manifest,
    private_key: Ed25519PrivateKey,
    sources: Mapping[str, Path | bytes],
    limits: BundleLimits = DEFAULT_LIMITS,
) -> Path:
    """Sign ``manifest`` with ``private_key`` and write the bundle to ``out`` atomically.

    ``sources`` maps every ``manifest.files[].path`` to a file path or bytes; each source is
    re-hashed while it is copied and must match its manifest entry (BuildError if not)."""
    out = Path(out)
    signer = compute_key_id(private_key.public_key())
    if manifest.publisher_key_id != signer:
        raise BuildError(
            f"manifest publisher_key_id {manifest.publisher_key_id[:16]} is not the signing "
            f"key {signer[:16]}"
        )
    listed = [entry.path for entry in manifest.files]
    if set(sources) != set(listed):
        extra = sorted(set(sources) - set(listed))
        missing = sorted(set(listed) - set(sources))
        raise BuildError(
            f"no source for manifest file {missing[0]!r}"
            if missing
            else f"source {extra[0]!r} is not in the manifest"
        )
    manifest_bytes = manifest.to_bytes()
    signature = sign_manifest(manifest_bytes, private_key)
    if len(manifest_bytes) > limits.max_manifest_bytes:
        raise TooLargeError(
            f"manifest is {len(manifest_bytes)} bytes (limit {limits.max_manifest_bytes})"
        )
    if len(manifest.files) + 2 > limits.max_members:
        raise TooLargeError(f"{len(manifest.files) + 2} members (limit {limits.max_members})")
    for entry in manifest.files:
        if entry.size > limits.max_file_bytes:
            raise TooLargeError(
                f"{entry.path} is {entry.size} bytes (limit {limits.max_file_bytes})"
            )
    estimate = _estimate_size(len(manifest_bytes), len(signature), [e.size for e in manifest.files])
    if estimate > limits.max_bundle_bytes:
        raise TooLargeError(
            f"bundle would be about {estimate} bytes (limit {limits.max_bundle_bytes})"
        )

    directory = out.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.addfile(
                    _tarinfo(MANIFEST_NAME, len(manifest_bytes)), io.BytesIO(manifest_bytes)
                )
                tar.addfile(_tarinfo(SIGNATURE_NAME, len(signature)), io.BytesIO(signature))
                for entry in manifest.files:
                    source = sources[entry.path]
                    info = _tarinfo(FILES_PREFIX + entry.path, entry.size)
                    if isinstance(source, bytes | bytearray | memoryview):
                        raw: BinaryIO = io.BytesIO(bytes(source))
                        ctx: contextlib.AbstractContextManager[BinaryIO] = contextlib.nullcontext(raw)
                    else:
                        ctx = open(source, "rb")
                    with ctx as raw_fh:
                        reader = _HashingReader(raw_fh)
                        try:
                            tar.addfile(info, reader)
                        except OSError as exc:
                            raise BuildError(
                                f"{entry.path}: source shorter than manifest size ({exc})"
                            ) from None
                        if raw_fh.read(1):
                            raise BuildError(f"{entry.path}: source longer than manifest size")
                    if reader.count != entry.size or reader.digest.hexdigest() != entry.sha256:
                        raise BuildError(
                            f"{entry.path}: source does not match its manifest hash (changed during build?)"
                        )
            fh.flush()
            os.fchmod(fh.fileno(), 0o644)
            os.fsync(fh.fileno())
        os.replace(tmp_name, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return out
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
    return out


__all__ = ["write_bundle"]
