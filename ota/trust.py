"""TUF trust on the device: pure verification over metadata bytes.

python-tuf's ``TrustedMetadataSet`` does the rules (root chain with thresholds, signature
checks, rollback and freeze protection, snapshot/targets consistency); this module feeds it
the bytes in the order of the TUF client workflow and converts its errors into one small
family. No files, no network: metadata comes from a ``MetadataSource`` (the device's HTTP
fetcher, or an in-memory repository in tests) and the caller persists what comes back.

Target paths: a published bundle is ``bundles/<sha256>.efb`` in ``targets.json``, with
``length``, ``hashes.sha256`` and ``custom = {name, version, publisher_key_id}``.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ota.errors import ProtocolError

if TYPE_CHECKING:  # python-tuf (with urllib3) is imported when metadata is first checked,
    # not when the agent starts: a serving agent that never updates does not load it
    from tuf.api.metadata import TargetFile, Targets
    from tuf.ngclient._internal.trusted_metadata_set import TrustedMetadataSet

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TRUST_LIMITS",
    "MAX_ROOT_ROTATIONS",
    "MetadataSource",
    "TrustError",
    "TrustExpiredError",
    "TrustRollbackError",
    "TrustSignatureError",
    "TrustUnavailableError",
    "TargetMismatchError",
    "TrustedFiles",
    "TrustLimits",
    "check_target",
    "refresh",
    "target_path",
]

MAX_ROOT_ROTATIONS = 32


class TrustError(ProtocolError):
    """TUF metadata that must not be trusted (any reason)."""


class TrustSignatureError(TrustError):
    """Metadata not signed by a threshold of the keys the trusted root names."""


class TrustRollbackError(TrustError):
    """Metadata older than what the device already trusts (rollback / replay)."""


class TrustExpiredError(TrustError):
    """Metadata past its expiry (freeze attack, or a server that stopped refreshing)."""


class TrustUnavailableError(TrustError):
    """The metadata source could not be reached, timed out or answered with a server
    error: nothing was learned about the bundle, so the device retries later (with
    backoff) instead of refusing the instruction."""


class TargetMismatchError(TrustError):
    """The instruction names a bundle that trusted targets metadata does not list as such
    (mix-and-match)."""


@dataclass(frozen=True)
class TrustLimits:
    """Largest metadata file accepted per role (bytes read from the network are bounded)."""

    root: int = 512 * 1024
    timestamp: int = 16 * 1024
    snapshot: int = 256 * 1024
    targets: int = 4 * 1024 * 1024


DEFAULT_TRUST_LIMITS = TrustLimits()


class MetadataSource(Protocol):
    """Where remote metadata comes from: ``fetch("timestamp.json", max_len)`` -> bytes,
    ``None`` when the file does not exist (used to probe ``N.root.json``). Transport
    problems raise ``TrustError`` (or ``OSError``)."""

    def fetch(self, name: str, max_length: int) -> bytes | None: ...


@dataclass(frozen=True)
class TrustedFiles:
    """The metadata bytes a device trusts; ``root`` is required, the others may be absent."""

    root: bytes
    timestamp: bytes | None = None
    snapshot: bytes | None = None
    targets: bytes | None = None


def target_path(sha256: str) -> str:
    return f"bundles/{sha256}.efb"


def _convert(e: Exception, what: str) -> TrustError:
    from tuf.api import exceptions as tuf_errors

    if isinstance(e, tuf_errors.UnsignedMetadataError):
        return TrustSignatureError(f"{what}: {e}")
    if isinstance(e, tuf_errors.BadVersionNumberError):
        return TrustRollbackError(f"{what}: {e or 'version rollback'}")
    if isinstance(e, tuf_errors.ExpiredMetadataError):
        return TrustExpiredError(f"{what}: {e}")
    if isinstance(e, tuf_errors.LengthOrHashMismatchError):
        return TrustRollbackError(f"{what}: does not match the trusted hash/length ({e})")
    return TrustError(f"{what}: {type(e).__name__}: {e}")


def _fetch(source: MetadataSource, name: str, max_length: int) -> bytes:
    data = source.fetch(name, max_length)
    if data is None:
        raise TrustError(f"{name}: not found on the metadata source")
    if len(data) > max_length:
        raise TrustError(f"{name}: {len(data)} bytes exceeds limit {max_length}")
    return data


def refresh(
    trusted: TrustedFiles,
    source: MetadataSource,
    *,
    now: datetime.datetime,
    limits: TrustLimits = DEFAULT_TRUST_LIMITS,
) -> tuple[TrustedMetadataSet, TrustedFiles]:
    """Run the TUF client workflow from ``trusted`` against ``source`` at time ``now``.

    Returns the verified metadata set and the files to persist. Raises ``TrustError`` (and
    the caller must then keep its old files: nothing here is persisted)."""
    from tuf.api import exceptions as tuf_errors
    from tuf.ngclient._internal.trusted_metadata_set import TrustedMetadataSet
    from tuf.ngclient.config import EnvelopeType

    try:
        tms = TrustedMetadataSet(trusted.root, EnvelopeType.METADATA)
    except tuf_errors.RepositoryError as e:
        raise _convert(e, "trusted root") from e
    except Exception as e:
        raise TrustError(f"trusted root is unreadable: {e}") from e
    tms.reference_time = now
    root_bytes = trusted.root

    # 1. root chain: N+1, N+2, ... each signed by the previous root's threshold and its own.
    for _ in range(MAX_ROOT_ROTATIONS):
        name = f"{tms.root.version + 1}.root.json"
        data = source.fetch(name, limits.root)
        if data is None:
            break
        try:
            tms.update_root(data)
        except tuf_errors.RepositoryError as e:
            raise _convert(e, name) from e
        except Exception as e:
            raise TrustError(f"{name}: malformed: {e}") from e
        root_bytes = data
    rotated = root_bytes is not trusted.root

    # 2. timestamp: the local one (even expired) is the rollback baseline, unless the root
    #    rotated (its keys may be gone: then the new root's keys decide).
    timestamp = None if rotated else trusted.timestamp
    if timestamp is not None:
        try:
            tms.update_timestamp(timestamp)
        except tuf_errors.RepositoryError:
            pass  # loaded for rollback protection if it verified, even if expired
    remote_ts = _fetch(source, "timestamp.json", limits.timestamp)
    try:
        tms.update_timestamp(remote_ts)
        timestamp = remote_ts
    except tuf_errors.EqualVersionNumberError:
        pass  # same version as the local one: keep it
    except tuf_errors.RepositoryError as e:
        raise _convert(e, "timestamp.json") from e
    except Exception as e:
        raise TrustError(f"timestamp.json: malformed: {e}") from e
    if timestamp is None or "timestamp" not in tms:
        raise TrustError("no valid timestamp.json")

    # 3. snapshot and 4. targets: the local copy if it still matches, else the remote one.
    snapshot = _load_role(tms, "snapshot", None if rotated else trusted.snapshot, source,
                          limits.snapshot)
    targets = _load_role(tms, "targets", None if rotated else trusted.targets, source,
                         limits.targets)
    return tms, TrustedFiles(root=root_bytes, timestamp=timestamp, snapshot=snapshot,
                             targets=targets)


def _update(tms: TrustedMetadataSet, role: str, data: bytes, *, local: bool) -> None:
    if role == "snapshot":
        tms.update_snapshot(data, trusted=local)
    else:
        tms.update_targets(data)


def _load_role(tms: TrustedMetadataSet, role: str, local: bytes | None,
               source: MetadataSource, max_length: int) -> bytes:
    from tuf.api import exceptions as tuf_errors

    if local is not None:
        try:
            _update(tms, role, local, local=True)
            return local
        except tuf_errors.RepositoryError:
            pass  # stale or invalid: fetch the current one
        except Exception as e:  # unreadable local copy: fetch the current one too
            log.warning("local %s metadata unusable (%s); fetching it", role, e)
    name = f"{role}.json"
    data = _fetch(source, name, max_length)
    try:
        _update(tms, role, data, local=False)
    except tuf_errors.RepositoryError as e:
        raise _convert(e, name) from e
    except Exception as e:
        raise TrustError(f"{name}: malformed: {e}") from e
    return data


def check_target(tms: TrustedMetadataSet, *, sha256: str, size: int, name: str,
                 version: str, publisher_key_id: str) -> TargetFile:
    """The trusted target for this bundle; ``TargetMismatchError`` unless trusted targets
    metadata lists exactly this sha256, size, name, version and publisher key."""
    if "targets" not in tms:
        raise TrustError("targets metadata not loaded")
    targets: Targets = tms.targets
    path = target_path(sha256)
    info = targets.targets.get(path)
    if info is None:
        raise TargetMismatchError(
            f"bundle {name}@{version} sha256 {sha256[:16]} is not a target in trusted "
            f"metadata (targets v{targets.version})")
    if info.length != size or info.hashes.get("sha256") != sha256:
        raise TargetMismatchError(
            f"target {path}: trusted length/sha256 {info.length}/"
            f"{str(info.hashes.get('sha256'))[:16]} != instruction {size}/{sha256[:16]}")
    custom = info.custom
    want = {"name": name, "version": version, "publisher_key_id": publisher_key_id}
    for key, value in want.items():
        if custom.get(key) != value:
            raise TargetMismatchError(
                f"target {path}: trusted {key} {custom.get(key)!r} != instruction {value!r}")
    return info
