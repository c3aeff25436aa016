"""Signature and hash verification, and safe extraction.

Order (docs/bundle-format.md): bundle size and member headers, then the signature over the
stored manifest bytes, then the manifest schema, the member set, and the file hashes in one
streamed pass (bounded memory) that also yields the SHA-256 of the whole ``.efb`` file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .atomic import fsync_dir
from .errors import (
    ArchiveError,
    ExtraFileError,
    HashMismatchError,
    MissingFileError,
    SignatureError,
)
from .limits import DEFAULT_LIMITS, BundleLimits
from .manifest import Manifest
from .reader import (
    CHUNK,
    FILES_PREFIX,
    Archive,
    Member,
    open_archive,
    open_bundle_file,
    read_member_chunks,
)
from .signing import verify_manifest_signature

TrustedKeys = Iterable[Ed25519PublicKey] | Mapping[str, Ed25519PublicKey]


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signature, member set and hashes all checked out."""

    manifest: Manifest
    manifest_bytes: bytes
    key_id: str
    sha256: str  # of the whole .efb file
    size: int


def _check_members(manifest: Manifest, archive: Archive) -> dict[str, Member]:
    """Map manifest path -> member; refuse extra and missing members and size mismatches."""
    listed = {entry.path for entry in manifest.files}
    by_path: dict[str, Member] = {}
    for member in archive.file_members:
        if member.path not in listed:
            raise ExtraFileError(member.name)
        by_path[member.path] = member
    for entry in manifest.files:
        member = by_path.get(entry.path)
        if member is None:
            raise MissingFileError(entry.member)
        if member.size != entry.size:
            raise HashMismatchError(
                f"{entry.member} (size {member.size}, manifest says {entry.size})"
            )
    return by_path


def _hash_pass(fh: BinaryIO, size: int, members: list[Member]) -> tuple[str, dict[str, str]]:
    """One sequential read of the file: SHA-256 of the whole file and of each member."""
    spans = sorted(members, key=lambda m: m.offset)
    hashers = {m.name: hashlib.sha256() for m in spans}
    whole = hashlib.sha256()
    fh.seek(0)
    pos = 0
    first = 0
    while True:
        data = fh.read(CHUNK)
        if not data:
            break
        whole.update(data)
        end = pos + len(data)
        view = memoryview(data)
        while first < len(spans) and spans[first].offset + spans[first].size <= pos:
            first += 1
        i = first
        while i < len(spans) and spans[i].offset < end:
            m = spans[i]
            lo = max(m.offset, pos)
            hi = min(m.offset + m.size, end)
            if lo < hi:
                hashers[m.name].update(view[lo - pos : hi - pos])
            i += 1
        pos = end
    if pos != size:
        raise ArchiveError("bundle changed size while being read")
    return whole.hexdigest(), {name: h.hexdigest() for name, h in hashers.items()}


def _verify_open(
    fh: BinaryIO, trusted_keys: TrustedKeys, limits: BundleLimits
) -> tuple[VerifiedBundle, dict[str, Member]]:
    archive = open_archive(fh, limits)
    key_id = verify_manifest_signature(
        archive.manifest_bytes, archive.signature_bytes, trusted_keys
    )
    manifest = Manifest.from_bytes(archive.manifest_bytes)
    if manifest.publisher_key_id != key_id:
        raise SignatureError(
            f"manifest names publisher {manifest.publisher_key_id[:16]} but is signed by "
            f"{key_id[:16]}"
        )
    by_path = _check_members(manifest, archive)
    whole, digests = _hash_pass(fh, archive.size, list(by_path.values()))
    for entry in manifest.files:
        if digests[entry.member] != entry.sha256:
            raise HashMismatchError(entry.member)
    verified = VerifiedBundle(
        manifest=manifest,
        manifest_bytes=archive.manifest_bytes,
        key_id=key_id,
        sha256=whole,
        size=archive.size,
    )
    return verified, by_path


def verify_bundle(
    path: Path, trusted_keys: TrustedKeys, limits: BundleLimits = DEFAULT_LIMITS
) -> VerifiedBundle:
    """Verify a bundle file completely; raise a :class:`~model_bundles.errors.BundleError`
    subclass naming the first problem. Writes nothing."""
    with open_bundle_file(path) as fh:
        verified, _ = _verify_open(fh, trusted_keys, limits)
    return verified


def extract_verified(
    path: Path,
    dest: Path,
    trusted_keys: TrustedKeys,
    limits: BundleLimits = DEFAULT_LIMITS,
) -> VerifiedBundle:
    """Verify ``path``, then write the manifest's files (``files/<p>`` -> ``dest/<p>``).

    ``dest`` must not exist (FileExistsError). Files go into a fresh temporary directory
    beside ``dest``, are re-hashed while written and fsynced; the directory is renamed to
    ``dest`` only when every hash matches. On any error nothing is left behind."""
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise FileExistsError(f"extraction target {dest} already exists")
    parent = dest.parent
    with open_bundle_file(path) as fh:
        verified, by_path = _verify_open(fh, trusted_keys, limits)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=parent))
        try:
            created_dirs = {tmp}
            entries = sorted(verified.manifest.files, key=lambda e: by_path[e.path].offset)
            for entry in entries:
                member = by_path[entry.path]
                target = tmp.joinpath(*entry.path.split("/"))
                directory = target.parent
                if directory not in created_dirs:
                    directory.mkdir(parents=True, exist_ok=True)
                    d = directory
                    while d != tmp and d not in created_dirs:
                        created_dirs.add(d)
                        d = d.parent
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                flags |= getattr(os, "O_CLOEXEC", 0)
                fd = os.open(target, flags, 0o644)
                digest = hashlib.sha256()
                written = 0
                with os.fdopen(fd, "wb") as out:
                    for chunk in read_member_chunks(fh, member):
                        digest.update(chunk)
                        out.write(chunk)
                        written += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                if written != entry.size or digest.hexdigest() != entry.sha256:
                    raise HashMismatchError(
                        f"{FILES_PREFIX}{entry.path} (changed during extraction)"
                    )
            for directory in sorted(created_dirs, key=lambda p: len(p.parts), reverse=True):
                fsync_dir(directory)
            os.chmod(tmp, 0o755)
            if dest.exists() or dest.is_symlink():
                raise FileExistsError(f"extraction target {dest} already exists")
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    with contextlib.suppress(OSError):
        fsync_dir(parent)
    return verified


def verify_extracted(directory: Path, manifest: Manifest) -> None:
    """Re-hash an extracted directory against ``manifest``: every listed file present with
    its size and SHA-256, nothing else (no extra files, symlinks or special files).

    Raises MissingFileError, ExtraFileError or HashMismatchError."""
    root = Path(directory)
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        raise MissingFileError(f"{root} (directory does not exist)") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MissingFileError(f"{root} (not a directory)")
    expected = {entry.path: entry for entry in manifest.files}
    expected_dirs: set[str] = set()
    for path in expected:
        parts = path.split("/")
        for i in range(1, len(parts)):
            expected_dirs.add("/".join(parts[:i]))
    seen: set[str] = set()

    def _raise(exc: OSError) -> None:
        raise exc

    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        for name in dirnames:
            rel = prefix + name
            if stat.S_ISLNK(os.lstat(os.path.join(dirpath, name)).st_mode):
                raise ExtraFileError(f"{rel} (symlink)")
            if rel not in expected_dirs:
                raise ExtraFileError(rel)
        for name in filenames:
            rel = prefix + name
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            if not stat.S_ISREG(mode):
                raise ExtraFileError(f"{rel} (not a regular file)")
            if rel not in expected:
                raise ExtraFileError(rel)
            seen.add(rel)
    for path in expected:
        if path not in seen:
            raise MissingFileError(path)
    for path, entry in expected.items():
        target = root.joinpath(*path.split("/"))
        digest = hashlib.sha256()
        size = 0
        with open(target, "rb") as fh:
            while True:
                data = fh.read(CHUNK)
                if not data:
                    break
                digest.update(data)
                size += len(data)
        if size != entry.size or digest.hexdigest() != entry.sha256:
            raise HashMismatchError(path)


__all__ = [
    "TrustedKeys",
    "VerifiedBundle",
    "extract_verified",
    "verify_bundle",
    "verify_extracted",
]
