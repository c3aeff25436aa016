"""The fleet's TUF repository (``tuf.api.metadata``): root, targets, snapshot, timestamp.

Layout under ``DATA/trust/``::

    metadata/1.root.json, 2.root.json, ...   every root version (devices walk the chain)
    metadata/root.json                       the newest root (handed out at enrolment)
    metadata/targets.json, snapshot.json, timestamp.json
    keys/targets.key, snapshot.key, timestamp.key   online keys (0600), used by the server

Root keys are written to a directory the operator names (``fleet-server trust init
--root-keys DIR``) and can be moved offline: the server never needs them, only
``trust rotate-root`` does. Targets are the stored bundles (``bundles/<sha256>.efb`` with
length, sha256 and custom ``{name, version, publisher_key_id}``); ``TufRepo.metadata``
re-signs targets/snapshot when the bundle set changed and the timestamp when it is half way
to its (short) expiry, so devices always get fresh metadata.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from fleet_server.errors import FleetError
from model_bundles.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

TRUST_DIR = "trust"
ONLINE_ROLES = ("targets", "snapshot", "timestamp")
AUTO_ROOT_KEYS = "root-keys"
_SERIALIZER = JSONSerializer(compact=False)
_NAME_RE_ROOT = ".root.json"


class TrustRepoError(FleetError):
    """The TUF repository cannot be created, read or signed as asked."""


@dataclass(frozen=True)
class ExpiryPolicy:
    """How long each role's metadata stays valid (seconds)."""

    root_s: float = 365 * 86400
    targets_s: float = 90 * 86400
    snapshot_s: float = 7 * 86400
    timestamp_s: float = 86400

    def __post_init__(self) -> None:
        for name in ("root_s", "targets_s", "snapshot_s", "timestamp_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ExpiryPolicy.{name} must be > 0")


def _utc(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(int(ts), tz=datetime.UTC)


def target_path(sha256: str) -> str:
    """Same convention as ``ota.trust.target_path`` (kept here: no import needed)."""
    return f"bundles/{sha256}.efb"


# -- keys ------------------------------------------------------------------------------

def _signer(private: Ed25519PrivateKey) -> CryptoSigner:
    return CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))


def _write_key(path: Path, private: Ed25519PrivateKey) -> None:
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    atomic_write_bytes(path, pem, mode=0o600)


def _read_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise TrustRepoError(f"cannot read key {path}: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise TrustRepoError(f"{path} is not an Ed25519 private key")
    return key


def generate_root_keys(directory: Path, count: int) -> list[CryptoSigner]:
    """Write ``count`` new root keys (``root-<keyid>.key``, 0600) into ``directory``."""
    if count < 1:
        raise TrustRepoError("need at least one root key")
    directory.mkdir(parents=True, exist_ok=True)
    signers = []
    for _ in range(count):
        private = Ed25519PrivateKey.generate()
        signer = _signer(private)
        _write_key(directory / f"root-{signer.public_key.keyid[:16]}.key", private)
        signers.append(signer)
    return signers


def load_signers(directory: Path) -> list[CryptoSigner]:
    """Every ``*.key`` in ``directory`` as a signer."""
    paths = sorted(Path(directory).glob("*.key"))
    if not paths:
        raise TrustRepoError(f"no *.key files in {directory}")
    return [_signer(_read_key(p)) for p in paths]


# -- the repository --------------------------------------------------------------------

def _sign(md: Metadata[Any], signers: Iterable[CryptoSigner]) -> bytes:
    md.signatures.clear()
    for s in signers:
        md.sign(s, append=True)
    return md.to_bytes(_SERIALIZER)


def init_repo(data_root: Path, root_keys_dir: Path, *, threshold: int = 1, count: int = 1,
              policy: ExpiryPolicy = ExpiryPolicy(), now: float | None = None) -> list[str]:
    """Create ``DATA/trust`` with a v1 root over ``count`` new root keys written to
    ``root_keys_dir`` (``threshold`` of them sign each later root). Returns the root key ids.
    Refuses an existing repository."""
    if not 1 <= threshold <= count:
        raise TrustRepoError(f"threshold {threshold} must be between 1 and count {count}")
    base = Path(data_root) / TRUST_DIR
    if (base / "metadata" / "root.json").exists():
        raise TrustRepoError(f"{base} already holds a TUF repository (use rotate-root)")
    now = time.time() if now is None else now
    root_signers = generate_root_keys(Path(root_keys_dir), count)
    online: dict[str, CryptoSigner] = {}
    for role in ONLINE_ROLES:
        private = Ed25519PrivateKey.generate()
        _write_key(base / "keys" / f"{role}.key", private)
        online[role] = _signer(private)
    root = Root(expires=_utc(now + policy.root_s), consistent_snapshot=False)
    for s in root_signers:
        root.add_key(s.public_key, Root.type)
    root.roles[Root.type].threshold = threshold
    for role, s in online.items():
        root.add_key(s.public_key, role)
    data = _sign(Metadata(root), root_signers)
    meta = base / "metadata"
    atomic_write_bytes(meta / "1.root.json", data)
    atomic_write_bytes(meta / "root.json", data)
    repo = TufRepo(data_root, policy=policy, clock=lambda: now)
    repo.sync_targets([], force=True)
    return [s.public_key.keyid for s in root_signers]


def rotate_root(data_root: Path, old_signers: list[CryptoSigner], *,
                new_keys_dir: Path | None = None, new_signers: list[CryptoSigner] | None = None,
                threshold: int, count: int = 1, policy: ExpiryPolicy = ExpiryPolicy(),
                now: float | None = None) -> int:
    """Write root version N+1 whose root role is the new keys (generated into
    ``new_keys_dir``, or ``new_signers``), signed by the old threshold and the new keys.
    Returns the new version."""
    repo = TufRepo(data_root, policy=policy)
    current = repo.root()
    old_root: Root = current.signed
    old_ids = set(old_root.roles[Root.type].keyids)
    usable = [s for s in old_signers if s.public_key.keyid in old_ids]
    if len(usable) < old_root.roles[Root.type].threshold:
        raise TrustRepoError(
            f"{len(usable)} of the given keys are current root keys; the current root needs "
            f"{old_root.roles[Root.type].threshold}")
    if new_signers is None:
        if new_keys_dir is None:
            raise TrustRepoError("give new_keys_dir or new_signers")
        new_signers = generate_root_keys(Path(new_keys_dir), count)
    if not 1 <= threshold <= len(new_signers):
        raise TrustRepoError(f"threshold {threshold} must be between 1 and {len(new_signers)}")
    now = time.time() if now is None else now
    new_root = Root.from_dict(old_root.to_dict())
    for keyid in list(new_root.roles[Root.type].keyids):
        new_root.revoke_key(keyid, Root.type)
    for s in new_signers:
        new_root.add_key(s.public_key, Root.type)
    new_root.roles[Root.type].threshold = threshold
    new_root.version = old_root.version + 1
    new_root.expires = _utc(now + policy.root_s)
    data = _sign(Metadata(new_root), [*usable, *new_signers])
    meta = repo.base / "metadata"
    atomic_write_bytes(meta / f"{new_root.version}.root.json", data)
    atomic_write_bytes(meta / "root.json", data)
    return new_root.version


class TufRepo:
    """The server's view of ``DATA/trust``: serves metadata, re-signs online roles.

    All state is on disk (so ``trust rotate-root`` run beside a live server is picked up);
    one lock serialises re-signing within the process."""

    def __init__(self, data_root: Path, *, policy: ExpiryPolicy = ExpiryPolicy(),
                 clock: Callable[[], float] = time.time) -> None:
        self.base = Path(data_root) / TRUST_DIR
        self.policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        if not (self.base / "metadata" / "root.json").exists():
            raise TrustRepoError(f"no TUF repository in {self.base} (run fleet-server trust init)")

    @property
    def _meta(self) -> Path:
        return self.base / "metadata"

    def _read(self, name: str) -> bytes | None:
        try:
            return (self._meta / name).read_bytes()
        except FileNotFoundError:
            return None

    def _load(self, name: str) -> Metadata[Any]:
        data = self._read(name)
        if data is None:
            raise TrustRepoError(f"{self._meta / name} is missing")
        return Metadata.from_bytes(data)

    def root(self) -> Metadata[Root]:
        return self._load("root.json")

    def root_bytes(self) -> bytes:
        data = self._read("root.json")
        if data is None:
            raise RuntimeError("the TUF repository has no root.json")
        return data

    def _online_signer(self, role: str) -> CryptoSigner:
        return _signer(_read_key(self.base / "keys" / f"{role}.key"))

    def _write(self, role: str, signed: Any) -> bytes:
        data = _sign(Metadata(signed), [self._online_signer(role)])
        atomic_write_bytes(self._meta / f"{role}.json", data)
        return data

    def _stale(self, md: Metadata[Any] | None, life_s: float) -> bool:
        if md is None:
            return True
        left = md.signed.expires.timestamp() - self._clock()
        return left < life_s / 2

    def sync_targets(self, bundles: Iterable[dict[str, Any]], *, force: bool = False) -> None:
        """Make targets list exactly ``bundles`` (registry rows), then refresh snapshot and
        timestamp as needed."""
        with self._lock:
            now = self._clock()
            wanted: dict[str, TargetFile] = {}
            for b in bundles:
                path = target_path(str(b["id"]))
                wanted[path] = TargetFile(
                    length=int(b["size"]), hashes={"sha256": str(b["id"])}, path=path,
                    unrecognized_fields={"custom": {
                        "name": b["name"], "version": b["version"],
                        "publisher_key_id": b["publisher_key_id"]}})
            old_t = None if force else self._maybe("targets.json")
            if (old_t is None or self._stale(old_t, self.policy.targets_s)
                    or _target_dicts(old_t.signed.targets) != _target_dicts(wanted)):
                version = 1 if old_t is None else old_t.signed.version + 1
                old_any = self._maybe("targets.json")
                if old_any is not None:
                    version = max(version, old_any.signed.version + 1)
                self._write("targets", Targets(version=version, expires=_utc(
                    now + self.policy.targets_s), targets=wanted))
            targets = self._load("targets.json")
            snap = self._maybe("snapshot.json")
            t_ver = targets.signed.version
            if (snap is None or self._stale(snap, self.policy.snapshot_s)
                    or snap.signed.meta["targets.json"].version != t_ver):
                version = 1 if snap is None else snap.signed.version + 1
                self._write("snapshot", Snapshot(version=version, expires=_utc(
                    now + self.policy.snapshot_s), meta={"targets.json": MetaFile(t_ver)}))
            snap = self._load("snapshot.json")
            ts = self._maybe("timestamp.json")
            s_ver = snap.signed.version
            if (ts is None or self._stale(ts, self.policy.timestamp_s)
                    or ts.signed.snapshot_meta.version != s_ver):
                version = 1 if ts is None else ts.signed.version + 1
                self._write("timestamp", Timestamp(version=version, expires=_utc(
                    now + self.policy.timestamp_s), snapshot_meta=MetaFile(s_ver)))

    def _maybe(self, name: str) -> Metadata[Any] | None:
        data = self._read(name)
        return None if data is None else Metadata.from_bytes(data)

    def metadata(self, name: str, bundles: Iterable[dict[str, Any]] | None = None) -> bytes | None:
        """The bytes of ``name`` (``root.json``, ``N.root.json``, ``timestamp.json``,
        ``snapshot.json``, ``targets.json``), after syncing ``bundles`` if given; ``None``
        for an unknown name or a root version that does not exist."""
        if name.endswith(_NAME_RE_ROOT) and name != "root.json":
            version = name[: -len(_NAME_RE_ROOT)]
            if not version.isdigit() or len(version) > 9:
                return None
            return self._read(f"{int(version)}.root.json")
        if name not in ("root.json", "timestamp.json", "snapshot.json", "targets.json"):
            return None
        if bundles is not None and name != "root.json":
            self.sync_targets(bundles)
        return self._read(name)

    def root_key_ids(self) -> list[str]:
        root: Root = self.root().signed
        return list(root.roles[Root.type].keyids)


def _target_dicts(targets: dict[str, TargetFile]) -> dict[str, Any]:
    return {k: v.to_dict() for k, v in targets.items()}


def open_tuf_repo(data_root: Path, *, policy: ExpiryPolicy = ExpiryPolicy()) -> TufRepo:
    """Open ``DATA/trust``; on first start create it with one root key in
    ``DATA/trust/root-keys`` (logged: move it offline, or rotate to offline keys)."""
    base = Path(data_root) / TRUST_DIR
    if not (base / "metadata" / "root.json").exists():
        keys_dir = base / AUTO_ROOT_KEYS
        init_repo(data_root, keys_dir, threshold=1, count=1, policy=policy)
        log.warning("created a TUF repository with its root key in %s: move it offline or "
                    "run `fleet-server trust rotate-root` to offline keys", keys_dir)
    return TufRepo(data_root, policy=policy)


__all__ = [
    "ExpiryPolicy",
    "TrustRepoError",
    "TufRepo",
    "generate_root_keys",
    "init_repo",
    "load_signers",
    "open_tuf_repo",
    "rotate_root",
]
