"""Deltas between stored bundles: built on demand, cached on disk beside the bundles.

When an instruction sends bundle N+1 to a device whose reported active model is bundle N of
the same name, the deployer asks ``offer(N, N+1)`` for a ``DeltaRef`` to put beside the
bundle (docs/mqtt-protocol.md, "Deltas"). The first ask builds the delta
(``model_bundles.delta_build``, signed with the fleet key, self-checked: it rebuilds N+1
exactly or is declined) and caches it as ``DATA/bundles/deltas/<sha256>.efd`` with an index
file per pair, ``<base>-<target>.json``, holding its ``DeltaRef`` or why none is offered; a
later ask reads the index. No database table: the cache is derived data, and deleting the
folder only costs rebuilding. Devices fetch the file by its own hash, over MQTT chunks or
``GET /api/v1/bundles/by-hash/<sha256>.efd``, when their current instruction names it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from model_bundles.atomic import atomic_write_bytes
from model_bundles.delta_build import DEFAULT_MAX_RATIO, DeltaDeclined, build_delta
from model_bundles.errors import BundleError
from ota.chunks import file_chunk_hashes
from ota.delta import DeltaRef
from ota.errors import ProtocolError
from ota.limits import DEFAULT_CHUNK_SIZE

__all__ = ["DeltaStore"]

log = logging.getLogger(__name__)


MAX_BUNDLE_BYTES = 512 * 1024 * 1024
"""Bundles larger than this get no delta: the builder holds both bundles in memory."""


class DeltaStore:
    def __init__(self, *, root: Path, bundle_path: Callable[[str], Path],
                 key: Ed25519PrivateKey, max_ratio: float = DEFAULT_MAX_RATIO,
                 chunk_size: int = DEFAULT_CHUNK_SIZE,
                 max_bundle_bytes: int = MAX_BUNDLE_BYTES) -> None:
        self.root = Path(root)
        self._max_bytes = max_bundle_bytes
        self._bundle_path = bundle_path
        self._key = key
        self._max_ratio = max_ratio
        self._chunk_size = chunk_size
        self._lock = threading.Lock()  # one build at a time (a group deploy asks per device)

    def _index(self, base: str, target: str) -> Path:
        return self.root / f"{base}-{target}.json"

    def file(self, sha256: str) -> Path | None:
        """The cached delta file with this SHA-256, if there is one."""
        path = self.root / f"{sha256}.efd"
        return path if len(sha256) == 64 and path.is_file() else None

    def offer(self, base_sha256: str, target_sha256: str) -> DeltaRef | None:
        """The delta from bundle ``base_sha256`` to ``target_sha256``, built on first ask;
        None when none is offered (declined, or either bundle is not in the store)."""
        with self._lock:
            cached = self._cached(base_sha256, target_sha256)
            if cached is not None:
                return cached if isinstance(cached, DeltaRef) else None
            return self._build(base_sha256, target_sha256)

    def _cached(self, base: str, target: str) -> DeltaRef | str | None:
        try:
            obj = json.loads(self._index(base, target).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("delta index %s-%s unreadable (%s); building again", base[:12],
                        target[:12], e)
            return None
        if isinstance(obj, dict) and isinstance(obj.get("declined"), str):
            return str(obj["declined"])
        try:
            ref = DeltaRef.from_dict(obj)
        except ProtocolError:
            return None
        return ref if self.file(ref.sha256) is not None else None

    def _build(self, base: str, target: str) -> DeltaRef | None:
        base_path, target_path = self._bundle_path(base), self._bundle_path(target)
        if not (base_path.is_file() and target_path.is_file()):
            return None
        if max(base_path.stat().st_size, target_path.stat().st_size) > self._max_bytes:
            log.info("no delta %s -> %s: a bundle is over %d bytes", base[:12], target[:12],
                     self._max_bytes)
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            built = build_delta(base_path, target_path, self._key, max_ratio=self._max_ratio)
        except DeltaDeclined as e:
            log.info("no delta %s -> %s: %s", base[:12], target[:12], e)
            atomic_write_bytes(self._index(base, target),
                               json.dumps({"declined": str(e)}).encode())
            return None
        except (BundleError, OSError) as e:  # not cached: a later deploy tries again
            log.warning("building the delta %s -> %s failed: %s", base[:12], target[:12], e)
            return None
        sha = hashlib.sha256(built.data).hexdigest()
        path = self.root / f"{sha}.efd"
        atomic_write_bytes(path, built.data)
        ref = DeltaRef(base_sha256=base, sha256=sha, size=len(built.data),
                       chunk_size=self._chunk_size,
                       chunk_hashes=tuple(file_chunk_hashes(path, self._chunk_size)))
        atomic_write_bytes(self._index(base, target), json.dumps(ref.to_dict()).encode())
        log.info("delta %s -> %s: %d bytes (%.1f%% of the bundle)", base[:12], target[:12],
                 len(built.data), 100 * built.ratio)
        return ref
