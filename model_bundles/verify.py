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
from types import ModuleType
from typing import TYPE_CHECKING, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .atomic import fsync_dir
from .errors import (
    ArchiveError,
    ExtraFileError,
    HashMismatchError,
    MissingFileError,
    SignatureError,
)
from .limits import CHUNK, DEFAULT_LIMITS, BundleLimits
from .manifest import Manifest
from .signing import verify_manifest_signature

if TYPE_CHECKING:
    from .reader import Archive, Member


def _reader() -> ModuleType:
    """The .efb reader (and ``tarfile`` with it), imported when a bundle file is read: an
    agent that only serves its extracted slot never needs it (about 0.4 MiB resident)."""
    from . import reader

    return reader

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
    member: Member | None
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


def _hash_pass(fh: BinaryIO, size: int, members: list[Member],
               writer: _MemberWriter | None = None) -> tuple[str, dict[str, str]]:
    """One sequential read of the file: SHA-256 of the whole file and of each member
    (whose bytes also go to ``writer`` when one is given)."""
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
                if writer is not None:
                    writer.write(m.name, view[lo - pos : hi - pos])
            i += 1
        pos = end
    if writer is not None:
        writer.close()
    if pos != size:
        raise ArchiveError("bundle changed size while being read")
    return whole.hexdigest(), {name: h.hexdigest() for name, h in hashers.items()}


def _open_signed(
    fh: BinaryIO, trusted_keys: TrustedKeys, limits: BundleLimits
) -> tuple[Archive, Manifest, dict[str, Member]]:
    """The header pass both verify and extract start with: the archive's index, the
    manifest's signature by a trusted publisher key (over the original bytes), the manifest
    naming that same key, and the members matched to the manifest's files."""
    archive = _reader().open_archive(fh, limits)
    key_id = verify_manifest_signature(
        archive.manifest_bytes, archive.signature_bytes, trusted_keys
    )
    manifest = Manifest.from_bytes(archive.manifest_bytes)
    if manifest.publisher_key_id != key_id:
        raise SignatureError(
            f"manifest names publisher {manifest.publisher_key_id[:16]} but is signed by "
            f"{key_id[:16]}"
        )
    return archive, manifest, _check_members(manifest, archive)


def _verify_open(
    fh: BinaryIO, trusted_keys: TrustedKeys, limits: BundleLimits
) -> tuple[VerifiedBundle, dict[str, Member]]:
    archive, manifest, by_path = _open_signed(fh, trusted_keys, limits)
    whole, digests = _hash_pass(fh, archive.size, list(by_path.values()))
    for entry in manifest.files:
        if digests[entry.member] != entry.sha256:
            raise HashMismatchError(entry.member)
    verified = VerifiedBundle(
        manifest=manifest,
        manifest_bytes=archive.manifest_bytes,
        key_id=manifest.publisher_key_id,  # equal to the signing key (checked)
        sha256=whole,
        size=archive.size,
    )
    return verified, by_path


def verify_bundle(
    path: Path, trusted_keys: TrustedKeys, limits: BundleLimits = DEFAULT_LIMITS
) -> VerifiedBundle:
    """Verify a bundle file completely; raise a :class:`~model_bundles.errors.BundleError`
    subclass naming the first problem. Writes nothing."""
    with _reader().open_bundle_file(path) as fh:
        verified, _ = _verify_open(fh, trusted_keys, limits)
    return verified


def verify_signed_manifest(
    path: Path, trusted_keys: TrustedKeys, limits: BundleLimits = DEFAULT_LIMITS
) -> tuple[Manifest, bytes, str]:
    """Check everything but the file hashes, reading only the member headers, the
    manifest and its signature: bounds, the signature over the stored manifest bytes, the
    manifest schema and the member set. Returns (manifest, manifest bytes, key id). The
    hashes are checked by :func:`extract_verified` while it extracts (one read)."""
    with _reader().open_bundle_file(path) as fh:
        archive = _reader().open_archive(fh, limits)
        key_id = verify_manifest_signature(
            archive.manifest_bytes, archive.signature_bytes, trusted_keys
        )
        manifest = Manifest.from_bytes(archive.manifest_bytes)
        if manifest.publisher_key_id != key_id:
            raise SignatureError(
                f"manifest names publisher {manifest.publisher_key_id[:16]} but is signed by "
                f"{key_id[:16]}"
            )
        _check_members(manifest, archive)
    return manifest, archive.manifest_bytes, key_id


def extract_verified(
    path: Path,
    dest: Path,
    trusted_keys: TrustedKeys,
    limits: BundleLimits = DEFAULT_LIMITS,
) -> VerifiedBundle:
    """Verify ``path`` and write the manifest's files (``files/<p>`` -> ``dest/<p>``) in
    one sequential read of the bundle.

    The signature over the manifest bytes, the manifest schema and the member set are
    checked first (headers and the two small members only); then one pass reads the whole
    file, hashing it and each member while writing the members into a fresh temporary
    directory beside ``dest`` (fsynced). The directory is renamed to ``dest`` only when
    every hash matches; on any error nothing is left behind. ``dest`` must not exist
    (FileExistsError)."""
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise FileExistsError(f"extraction target {dest} already exists")
    parent = dest.parent
    with _reader().open_bundle_file(path) as fh:
        archive, manifest, by_path = _open_signed(fh, trusted_keys, limits)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=parent))
        writer = _MemberWriter({by_path[e.path].name: tmp.joinpath(*e.path.split("/"))
                                for e in manifest.files}, tmp)
        try:
            whole, digests = _hash_pass(fh, archive.size, list(by_path.values()), writer)
            writer.create_empty()
            for entry in manifest.files:
                if digests[entry.member] != entry.sha256:
                    raise HashMismatchError(entry.member)
            for directory in sorted(writer.dirs, key=lambda p: len(p.parts), reverse=True):
                fsync_dir(directory)
            os.chmod(tmp, 0o755)  # noqa: S103 - the unpacked bundle directory: readable, writable by owner only
            if dest.exists() or dest.is_symlink():
                raise FileExistsError(f"extraction target {dest} already exists")
            os.rename(tmp, dest)
        except BaseException:
            writer.close()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    with contextlib.suppress(OSError):
        fsync_dir(parent)
    return VerifiedBundle(manifest=manifest, manifest_bytes=archive.manifest_bytes,
                          key_id=manifest.publisher_key_id, sha256=whole, size=archive.size)


class _MemberWriter:
    """Writes each member's bytes to its target file during the hash pass (members come
    in file order and do not overlap: one file open at a time), fsynced when it ends."""

    def __init__(self, targets: Mapping[str, Path], root: Path) -> None:
        self.targets = targets
        self.dirs: set[Path] = {root}
        self._root = root
        self._name: str | None = None
        self._out: BinaryIO | None = None
        self._created: set[str] = set()

    def create_empty(self) -> None:
        """Create the members that had no bytes to write (empty files)."""
        for name in self.targets:
            if name not in self._created:
                self.write(name, memoryview(b""))
        self.close()

    def write(self, name: str, data: memoryview) -> None:
        if name != self._name:
            self.close()
            if name in self._created:
                raise ArchiveError(f"member {name!r} overlaps another")
            self._created.add(name)
            target = self.targets[name]
            d = target.parent
            while d != self._root and d not in self.dirs:
                self.dirs.add(d)
                d = d.parent
            target.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            flags |= getattr(os, "O_CLOEXEC", 0)
            self._out = os.fdopen(os.open(target, flags, 0o644), "wb")
            self._name = name
        if self._out is None:
            raise RuntimeError("no output file open")
        self._out.write(data)

    def close(self) -> None:
        if self._out is not None:
            self._out.flush()
            os.fsync(self._out.fileno())
            self._out.close()
        self._out, self._name = None, None


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
    "verify_signed_manifest",
]
