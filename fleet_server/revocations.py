"""Revoked devices and their keys: ``DATA/ca/revoked.json``, next to the CA that issued them.

A revoked device is refused by the broker (embedded: ``BrokerAuthority``), by the API
(certificate renewal, bundle downloads with its credentials), by ingest (its reports are
dropped and counted), and its key's fingerprint can never enrol again. Entries are never
removed: a device id that was revoked stays taken.

The list is a small JSON file rather than a registry table so that the CA directory is the
one place holding certificate state (``fleet_server/ca.py``); a process re-reads it when
its modification time changes, so every server sharing the data directory sees a revocation.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fleet_server.ca import CA_DIR, FleetCA
from fleet_server.errors import FleetError
from model_bundles.atomic import atomic_write_bytes

__all__ = ["Revocation", "RevocationList"]

FILE = "revoked.json"


@dataclass(frozen=True)
class Revocation:
    device_id: str
    key_fingerprint: str | None
    revoked_at: float
    revoked_by: str


class RevocationList:
    """Thread-safe; ``is_revoked`` is a dictionary lookup after a ``stat``."""

    def __init__(self, data_root: Path) -> None:
        self.path = Path(data_root) / CA_DIR / FILE
        self._lock = threading.RLock()
        self._stamp: tuple[int, int] | None = None
        self._by_device: dict[str, Revocation] = {}
        self._by_key: dict[str, Revocation] = {}

    def _load(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._by_device, self._by_key = None, {}, {}
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            rows = json.loads(self.path.read_text())["devices"]
            entries = [Revocation(**row) for row in rows]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise FleetError(f"cannot read the revocation list {self.path}: {e}") from e
        self._by_device = {r.device_id: r for r in entries}
        self._by_key = {r.key_fingerprint: r for r in entries if r.key_fingerprint}
        self._stamp = stamp

    def revoke(self, *, device_id: str, key_fingerprint: str | None,
               revoked_by: str) -> tuple[Revocation, bool]:
        """Record the revocation; returns (entry, new). Revoking twice changes nothing."""
        with self._lock:
            self._load()
            existing = self._by_device.get(device_id)
            if existing is not None:
                return existing, False
            entry = Revocation(device_id=device_id, key_fingerprint=key_fingerprint,
                               revoked_at=time.time(), revoked_by=revoked_by)
            rows = [asdict(r) for r in self._by_device.values()] + [asdict(entry)]
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write_bytes(self.path, json.dumps({"devices": rows}, indent=1).encode())
            self._stamp = None
            self._load()
            return entry, True

    def is_revoked(self, device_id: str) -> bool:
        return self.get(device_id) is not None

    def get(self, device_id: str) -> Revocation | None:
        with self._lock:
            self._load()
            return self._by_device.get(device_id)

    def key_revoked(self, key_fingerprint: str) -> Revocation | None:
        """The revocation of the device that held this key, if any."""
        with self._lock:
            self._load()
            return self._by_key.get(key_fingerprint)

    def all(self) -> list[Revocation]:
        with self._lock:
            self._load()
            return sorted(self._by_device.values(), key=lambda r: r.revoked_at)

    def write_crl(self, ca: FleetCA) -> Path:
        """Rewrite the CA's ``crl.pem`` with every unexpired certificate of a revoked device
        (Mosquitto reads it as ``crlfile``; docs/operations.md)."""
        ca.prune_issued()
        ids = {r.device_id for r in self.all()}
        return ca.write_crl(ca.issued_serials(ids))
