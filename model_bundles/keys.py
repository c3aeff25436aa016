"""Ed25519 key files: ``publisher.key`` (PKCS#8 PEM, mode 0600) and ``publisher.pub``
(SubjectPublicKeyInfo PEM). A key id is the lower-case hex SHA-256 of the raw 32-byte public
key. The fleet and device keys (ota, device_agent) use the same helpers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .atomic import fsync_dir
from .errors import KeyFileError

PRIVATE_KEY_NAME = "publisher.key"
PUBLIC_KEY_NAME = "publisher.pub"
_MAX_KEY_FILE_BYTES = 64 * 1024


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically with ``mode``; refuse if ``path`` exists.

    The bytes go to a temporary file in the same directory (created with ``mode`` from the
    start, so a private key is never readable by others), are fsynced, then hard-linked to
    the final name (``link`` fails if the name exists: no check-then-write race)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise KeyFileError(f"{path} already exists; refusing to overwrite")
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp_name, path)
        except FileExistsError:
            raise KeyFileError(f"{path} already exists; refusing to overwrite") from None
        except OSError:
            # Filesystem without hard links: fall back to rename after a last check.
            if path.exists():
                raise KeyFileError(f"{path} already exists; refusing to overwrite") from None
            os.replace(tmp_name, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
    fsync_dir(directory)


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM (unencrypted) of ``key``."""
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def public_key_pem(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """SubjectPublicKeyInfo PEM text of ``key`` (a private key gives its public half)."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"not an Ed25519 key: {type(key).__name__}")
    return key.public_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    ).decode("ascii")


def public_key_raw(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """The raw 32 bytes of the public key."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"not an Ed25519 key: {type(key).__name__}")
    return key.public_bytes(
        encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw
    )


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """Lower-case hex SHA-256 of the raw 32-byte public key."""
    return raw_key_id(public_key_raw(key))


def raw_key_id(raw: bytes) -> str:
    """``key_id`` of a public key given as its raw 32 bytes."""
    return hashlib.sha256(raw).hexdigest()


def write_private_key(path: Path, key: Ed25519PrivateKey) -> Path:
    """Write ``key`` as PKCS#8 PEM with mode 0600, atomically; refuse to overwrite."""
    path = Path(path)
    _write_new_file(path, private_key_pem(key), 0o600)
    return path


def write_public_key(path: Path, key: Ed25519PublicKey | Ed25519PrivateKey) -> Path:
    """Write the SubjectPublicKeyInfo PEM of ``key`` (mode 0644), atomically; refuse to
    overwrite."""
    path = Path(path)
    _write_new_file(path, public_key_pem(key).encode("ascii"), 0o644)
    return path


def generate_private_key_file(path: Path) -> Ed25519PrivateKey:
    """Generate a fresh Ed25519 key, write it to ``path`` (0600, no overwrite), return it."""
    key = Ed25519PrivateKey.generate()
    write_private_key(Path(path), key)
    return key


def generate_keypair(
    out_dir: Path,
    private_name: str = PRIVATE_KEY_NAME,
    public_name: str = PUBLIC_KEY_NAME,
) -> tuple[Path, Path]:
    """Create ``out_dir`` if needed and write ``publisher.key`` (0600) and ``publisher.pub``.

    Refuses (KeyFileError) if either file already exists; nothing is overwritten.
    Returns ``(private_path, public_path)``."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot create {out_dir}: {exc.strerror or exc}") from exc
    priv_path = out_dir / private_name
    pub_path = out_dir / public_name
    for existing in (priv_path, pub_path):
        if existing.exists() or existing.is_symlink():
            raise KeyFileError(f"{existing} already exists; refusing to overwrite")
    key = Ed25519PrivateKey.generate()
    write_private_key(priv_path, key)
    try:
        write_public_key(pub_path, key)
    except BaseException:
        # Do not leave a private key without its public half (it was created just now).
        with contextlib.suppress(OSError):
            priv_path.unlink()
        raise
    return priv_path, pub_path


def _read_key_file(path: Path) -> bytes:
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from exc
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path}: file too large for a key")
    return data


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load a PKCS#8 PEM Ed25519 private key (unencrypted)."""
    data = _read_key_file(Path(path))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise KeyFileError(f"{path}: encrypted private keys are not supported") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    return key


def _public_key_from_bytes(data: bytes, where: str) -> Ed25519PublicKey:
    if len(data) == 32 and not data.startswith(b"-----"):
        return Ed25519PublicKey.from_public_bytes(data)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{where}: not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{where}: not an Ed25519 public key")
    return key


def load_public_key(path_or_pem: Path | str | bytes) -> Ed25519PublicKey:
    """Load an Ed25519 public key from a path, PEM text (``str`` starting with
    ``-----BEGIN``), PEM bytes, or the raw 32 bytes."""
    if isinstance(path_or_pem, Ed25519PublicKey):
        return path_or_pem
    if isinstance(path_or_pem, bytes | bytearray | memoryview):
        return _public_key_from_bytes(bytes(path_or_pem), "public key")
    if isinstance(path_or_pem, str) and path_or_pem.lstrip().startswith("-----BEGIN"):
        return _public_key_from_bytes(path_or_pem.encode("ascii", "replace"), "public key")
    path = Path(path_or_pem)
    return _public_key_from_bytes(_read_key_file(path), str(path))


__all__ = [
    "PRIVATE_KEY_NAME",
    "PUBLIC_KEY_NAME",
    "generate_keypair",
    "generate_private_key_file",
    "key_id",
    "load_private_key",
    "load_public_key",
    "private_key_pem",
    "public_key_pem",
    "public_key_raw",
    "raw_key_id",
    "write_private_key",
    "write_public_key",
]
