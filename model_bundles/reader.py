"""Bounded, safe walking of a bundle archive (never ``extractall``).

:func:`open_archive` checks the bundle size, then every member header (type, name, size,
position, duplicates, count) and that nothing but zero padding follows the end of the
archive. It reads no member data except ``manifest.json`` and ``manifest.sig``, both
bounded. :func:`read_manifest` / :func:`inspect_bundle` use it without verifying the
signature (for ``inspect``); :mod:`model_bundles.verify` builds on it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import (
    ArchiveError,
    BundleError,
    ExtraFileError,
    SignatureError,
    TooLargeError,
    UnsafePathError,
)
from .limits import CHUNK, DEFAULT_LIMITS, BundleLimits
from .manifest import Manifest, check_safe_path

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
FILES_PREFIX = "files/"

_EXTENSION_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


class _GuardedTarInfo(tarfile.TarInfo):
    """TarInfo that bounds pax / GNU long-name headers before tarfile reads them into
    memory, and refuses GNU sparse members before tarfile parses their maps."""

    max_extension_bytes = DEFAULT_LIMITS.max_header_bytes

    def _proc_member(self, tarfile_obj: tarfile.TarFile) -> tarfile.TarInfo:  # noqa: D401 - tarfile hook
        if self.type in _EXTENSION_TYPES and self.size > self.max_extension_bytes:
            raise TooLargeError(
                f"tar extension header of {self.size} bytes (limit {self.max_extension_bytes})"
            )
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise UnsafePathError(f"sparse member {self.name!r}")
        # a private tarfile hook that typeshed does not declare
        return super()._proc_member(tarfile_obj)  # type: ignore[misc, no-any-return]


@dataclass(frozen=True)
class Member:
    """One regular-file member: its name, data size and data offset in the bundle file."""

    name: str
    size: int
    offset: int

    @property
    def path(self) -> str:
        """The path below ``files/`` (only meaningful for file members)."""
        return self.name[len(FILES_PREFIX) :]


@dataclass(frozen=True)
class Archive:
    """The checked member list of an open bundle file."""

    size: int
    members: tuple[Member, ...]  # in archive order: manifest.json, manifest.sig, files/...
    manifest_bytes: bytes
    signature_bytes: bytes

    @property
    def file_members(self) -> tuple[Member, ...]:
        return self.members[2:]


@dataclass(frozen=True)
class BundleInfo:
    """What ``inspect`` shows: the (unverified) manifest and envelope signer."""

    manifest: Manifest
    manifest_bytes: bytes
    signer_key_id: str | None  # from manifest.sig, NOT verified; None if malformed
    size: int
    sha256: str
    members: tuple[Member, ...]


def _describe_type(info: tarfile.TarInfo) -> str:
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hard link"
    if info.ischr() or info.isblk():
        return "device"
    if info.isfifo():
        return "FIFO"
    if info.isdir():
        return "directory"
    if info.type == tarfile.CONTTYPE:
        return "contiguous-file"
    return f"type {info.type!r}"


def _check_member(
    info: tarfile.TarInfo,
    index: int,
    seen: set[str],
    file_size: int,
    limits: BundleLimits,
) -> Member:
    name = info.name
    if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or info.issparse():
        kind = "sparse" if info.issparse() else _describe_type(info)
        raise UnsafePathError(f"{kind} member {name!r}")
    if name in (MANIFEST_NAME, SIGNATURE_NAME):
        pass
    else:
        rest = name[len(FILES_PREFIX) :] if name.startswith(FILES_PREFIX) else name
        try:
            check_safe_path(rest)
        except UnsafePathError as exc:
            raise UnsafePathError(f"member {name!r}: {exc.detail}") from None
    folded = name.casefold()
    if folded in seen:
        raise UnsafePathError(f"duplicate member name {name!r}")
    seen.add(folded)
    if index == 0 and name != MANIFEST_NAME:
        raise ArchiveError(f"first member must be {MANIFEST_NAME}, found {name!r}")
    if index == 1 and name != SIGNATURE_NAME:
        raise ArchiveError(f"second member must be {SIGNATURE_NAME}, found {name!r}")
    if index >= 2 and not name.startswith(FILES_PREFIX):
        if name in (MANIFEST_NAME, SIGNATURE_NAME):
            raise ArchiveError(f"{name} out of place")
        raise ExtraFileError(name)
    size = info.size
    if size < 0:
        raise ArchiveError(f"negative size for {name!r}")
    if name == MANIFEST_NAME and size > limits.max_manifest_bytes:
        raise TooLargeError(f"{MANIFEST_NAME} is {size} bytes (limit {limits.max_manifest_bytes})")
    if name == SIGNATURE_NAME and size > limits.max_header_bytes:
        raise TooLargeError(f"{SIGNATURE_NAME} is {size} bytes (limit {limits.max_header_bytes})")
    if name.startswith(FILES_PREFIX) and size > limits.max_file_bytes:
        raise TooLargeError(f"member {name!r} is {size} bytes (limit {limits.max_file_bytes})")
    if info.offset_data + size > file_size:
        raise ArchiveError(f"member {name!r} is truncated")
    return Member(name=name, size=size, offset=info.offset_data)


def read_member_chunks(fh: BinaryIO, member: Member, chunk: int = CHUNK) -> Iterator[bytes]:
    """Yield a member's data in bounded chunks (ArchiveError on a short read)."""
    fh.seek(member.offset)
    left = member.size
    while left:
        data = fh.read(min(chunk, left))
        if not data:
            raise ArchiveError(f"member {member.name!r} is truncated")
        left -= len(data)
        yield data


def _read_member(fh: BinaryIO, member: Member) -> bytes:
    return b"".join(read_member_chunks(fh, member))


def _check_trailer(fh: BinaryIO, start: int, file_size: int) -> None:
    fh.seek(start)
    pos = start
    while pos < file_size:
        data = fh.read(min(CHUNK, file_size - pos))
        if not data:
            break
        if data.count(0) != len(data):
            raise ArchiveError("data after the end of the archive (corrupt or hidden member)")
        pos += len(data)


def open_archive(fh: BinaryIO, limits: BundleLimits = DEFAULT_LIMITS) -> Archive:
    """Check the bundle open on ``fh`` (a seekable binary file) header by header.

    Raises TooLargeError, UnsafePathError, ExtraFileError (a member outside ``files/``)
    or ArchiveError; reads only the manifest and signature member data."""
    st = os.fstat(fh.fileno()) if hasattr(fh, "fileno") else None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise ArchiveError("bundle is not a regular file")
    if st is not None:
        file_size = st.st_size
    else:  # pragma: no cover - BytesIO and friends
        file_size = fh.seek(0, os.SEEK_END)
    if file_size > limits.max_bundle_bytes:
        raise TooLargeError(f"bundle is {file_size} bytes (limit {limits.max_bundle_bytes})")
    fh.seek(0)
    guarded = type(
        "_BoundedTarInfo", (_GuardedTarInfo,), {"max_extension_bytes": limits.max_header_bytes}
    )
    members: list[Member] = []
    seen: set[str] = set()
    try:
        tar = tarfile.open(fileobj=fh, mode="r:", tarinfo=guarded)
        while True:
            info = tar.next()
            if info is None:
                break
            if len(members) >= limits.max_members:
                raise TooLargeError(f"more than {limits.max_members} members")
            members.append(_check_member(info, len(members), seen, file_size, limits))
            # keep memory bounded; we hold our own list (TarFile.members: private, not in typeshed)
            tar.members.clear()  # type: ignore[attr-defined]
        end = tar.offset
    except BundleError:
        raise
    except (tarfile.TarError, EOFError, ValueError, OverflowError) as exc:
        raise ArchiveError(f"not a readable tar archive ({exc})") from None
    _check_trailer(fh, end, file_size)
    if len(members) < 2:
        raise ArchiveError(f"bundle lacks {MANIFEST_NAME if not members else SIGNATURE_NAME}")
    manifest_bytes = _read_member(fh, members[0])
    signature_bytes = _read_member(fh, members[1])
    return Archive(
        size=file_size,
        members=tuple(members),
        manifest_bytes=manifest_bytes,
        signature_bytes=signature_bytes,
    )


def open_bundle_file(path: Path) -> BinaryIO:
    """Open ``path`` for reading without blocking on a FIFO; refuse non-regular files."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ArchiveError(f"{path} is not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def sha256_file(fh: BinaryIO) -> str:
    fh.seek(0)
    digest = hashlib.sha256()
    while True:
        data = fh.read(CHUNK)
        if not data:
            break
        digest.update(data)
    return digest.hexdigest()


def inspect_bundle(path: Path, limits: BundleLimits = DEFAULT_LIMITS) -> BundleInfo:
    """Read the manifest and the envelope's signer WITHOUT verifying anything but the
    archive structure and the manifest schema (bounded and safe; nothing is written)."""
    from .signing import SignatureEnvelope  # local: keeps reader free of crypto at import

    with open_bundle_file(path) as fh:
        archive = open_archive(fh, limits)
        manifest = Manifest.from_bytes(archive.manifest_bytes)
        try:
            signer: str | None = SignatureEnvelope.from_bytes(archive.signature_bytes).key_id
        except SignatureError:
            signer = None
        digest = sha256_file(fh)
    return BundleInfo(
        manifest=manifest,
        manifest_bytes=archive.manifest_bytes,
        signer_key_id=signer,
        size=archive.size,
        sha256=digest,
        members=archive.members,
    )


def read_manifest(path: Path, limits: BundleLimits = DEFAULT_LIMITS) -> Manifest:
    """The bundle's manifest, NOT verified (for inspect). Still bounded and safe: every
    member header is checked and the manifest is parsed strictly."""
    with open_bundle_file(path) as fh:
        archive = open_archive(fh, limits)
    return Manifest.from_bytes(archive.manifest_bytes)


__all__ = [
    "FILES_PREFIX",
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "Archive",
    "BundleInfo",
    "Member",
    "inspect_bundle",
    "open_archive",
    "open_bundle_file",
    "read_manifest",
    "read_member_chunks",
    "sha256_file",
]
