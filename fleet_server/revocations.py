"""Revoked devices and their keys: the ``revocations`` table of the registry database.

A revoked device is refused by the broker (embedded: ``BrokerAuthority``; Mosquitto:
``broker_control``), by the API (certificate renewal, bundle downloads with its
credentials), by ingest (its reports are dropped and counted), and its key's fingerprint
can never enrol again. Entries are never removed: a device id that was revoked stays taken.

The table is in the shared database, so every server using it (replicas on one
PostgreSQL) sees the same list. The checks on the hot path (every MQTT message, every
CONNECT) read a copy held in memory, reloaded when older than ``refresh_s``: another
server's revocation counts here within that time, this server's own at once. Servers
before this one kept the list in ``DATA/ca/revoked.json``: ``import_legacy`` copies it in
once and renames it ``revoked.json.imported``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fleet_server.ca import CA_DIR, FleetCA
from fleet_server.db import Database, open_database
from fleet_server.errors import FleetError

__all__ = ["LEGACY_FILE", "Revocation", "RevocationList"]

LEGACY_FILE = "revoked.json"
TABLE = "revocations"


@dataclass(frozen=True)
class Revocation:
    device_id: str
    key_fingerprint: str | None
    revoked_at: float
    revoked_by: str


class RevocationList:
    """Thread-safe; ``is_revoked`` is a dictionary lookup while the copy is fresh."""

    def __init__(self, target: Database | Path | str, *, refresh_s: float = 1.0) -> None:
        self._owned = not isinstance(target, Database)
        self._db = open_database(target)
        self.refresh_s = refresh_s
        self._lock = threading.RLock()
        self._loaded_at: float | None = None
        self._by_device: dict[str, Revocation] = {}
        self._by_key: dict[str, Revocation] = {}

    def close(self) -> None:
        if self._owned:
            self._db.close()

    def _load(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and self._loaded_at is not None and now - self._loaded_at < self.refresh_s:
            return
        entries = [Revocation(**row) for row in self._db.select(
            TABLE, columns="device_id, key_fingerprint, revoked_at, revoked_by")]
        self._by_device = {r.device_id: r for r in entries}
        self._by_key = {r.key_fingerprint: r for r in entries if r.key_fingerprint}
        self._loaded_at = now

    def revoke(self, *, device_id: str, key_fingerprint: str | None,
               revoked_by: str) -> tuple[Revocation, bool]:
        """Record the revocation; returns (entry, new). Revoking twice changes nothing."""
        entry = Revocation(device_id=device_id, key_fingerprint=key_fingerprint,
                           revoked_at=time.time(), revoked_by=revoked_by)
        # the write not under self._lock: the ingest worker asks is_revoked inside its batch
        # transaction (report_ingest, batch_transaction), so a thread waiting for the
        # database must not hold the lock
        new = self._db.insert(TABLE, _row(entry), ignore_pk=("device_id",)) == 1
        with self._lock:
            self._load(force=True)
            return self._by_device[device_id], new

    def is_revoked(self, device_id: str) -> bool:
        return self.get(device_id) is not None

    def get(self, device_id: str) -> Revocation | None:
        with self._lock:
            self._load()
            return self._by_device.get(device_id)

    def key_revoked(self, key_fingerprint: str) -> Revocation | None:
        """The revocation of the device that held this key, if any (read now, not from the
        copy: enrolment is not on a hot path)."""
        with self._lock:
            self._load(force=True)
            return self._by_key.get(key_fingerprint)

    def all(self) -> list[Revocation]:
        with self._lock:
            self._load(force=True)
            return sorted(self._by_device.values(), key=lambda r: r.revoked_at)

    def write_crl(self, ca: FleetCA) -> Path:
        """Rewrite the CA's ``crl.pem`` with every unexpired certificate of a revoked device
        (Mosquitto reads it as ``crlfile``; docs/operations.md)."""
        ca.prune_issued()
        ids = {r.device_id for r in self.all()}
        return ca.write_crl(ca.issued_serials(ids))

    def import_legacy(self, data_root: Path) -> int:
        """Copy ``DATA/ca/revoked.json`` (a server before the shared table) in, keeping any
        entry already there, then rename it ``.imported``; returns the entries added."""
        path = Path(data_root) / CA_DIR / LEGACY_FILE
        if not path.exists():
            return 0
        try:
            entries = [Revocation(**row) for row in json.loads(path.read_text())["devices"]]
        except FileNotFoundError:
            return 0  # another server sharing the data directory imported it just now
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise FleetError(f"cannot import the revocation list {path}: {e}") from e
        with self._lock, self._db.transaction():
            added = sum(self._db.insert(TABLE, _row(r), ignore_pk=("device_id",))
                        for r in entries)
        with contextlib.suppress(FileNotFoundError):  # or another server renamed it
            path.rename(path.with_name(LEGACY_FILE + ".imported"))
        self._load(force=True)
        return added


def _row(r: Revocation) -> dict[str, object]:
    return {"device_id": r.device_id, "key_fingerprint": r.key_fingerprint,
            "revoked_at": r.revoked_at, "revoked_by": r.revoked_by}
