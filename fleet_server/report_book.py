"""What the server remembers to verify device-signed reports (``report_verify``): the
bundles it sent each device, and the seq of the last online state it kept from each.

Two tables of the registry database (migration ``0003_revocations_report_book``), so every
server sharing it (replicas on one PostgreSQL) verifies against the same book:

- ``report_sent_bundles (device_id, sha256, first_sent_at)``: every bundle hash an
  instruction to the device named, as its bundle or as its shadow candidate; recorded when
  the instruction is published (and again for every current instruction when the bridge
  connects), kept for good: a report about the previous bundle may arrive long after the
  device moved on. An empty book on an existing registry is filled once from the
  deployments (``MqttBridge.backfill_sent``).
- ``report_state_seqs (device_id, seq)``: the seq of the newest signed online state kept.

Servers before this one kept both in ``DATA/report_book.db``: ``import_legacy`` copies it
in once and renames it ``report_book.db.imported``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from fleet_server.db import SIDE_FILES, Database, open_database
from fleet_server.errors import FleetError

__all__ = ["LEGACY_FILE", "ReportBook", "instruction_hashes"]

LEGACY_FILE = "report_book.db"
KNOWN_SENT_MAX = 200_000

_KEEP_NEWER_SEQ = (
    "INSERT INTO report_state_seqs (device_id, seq) VALUES (?, ?) ON CONFLICT (device_id) "
    "DO UPDATE SET seq = CASE WHEN excluded.seq > report_state_seqs.seq THEN excluded.seq "
    "ELSE report_state_seqs.seq END")


class ReportBook:
    def __init__(self, target: Database | Path | str | None = None) -> None:
        """``target``: the registry database (or its URL or SQLite file); ``None`` opens a
        throwaway SQLite file (a bridge built without a server)."""
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if target is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="report-book-")
            target = Path(self._tmp.name) / "book.db"
        self._owned = not isinstance(target, Database)
        self._db = open_database(target)
        self._lock = threading.Lock()
        # a pair once sent stays sent, so a positive answer is kept (bounded); a negative is
        # asked again (another server may record it meanwhile)
        self._known_sent: set[tuple[str, str]] = set()

    def close(self) -> None:
        with self._lock:
            if self._owned:
                self._db.close()
            if self._tmp is not None:
                self._tmp.cleanup()

    def record_sent(self, sent: Iterable[tuple[str, str]]) -> None:
        """Remember ``(device_id, sha256)`` pairs (already known ones are kept as they are)."""
        rows = [(d, s, time.time()) for d, s in sent]
        if not rows:
            return
        # not under self._lock: a thread waiting for the database must hold no lock the
        # ingest worker takes inside its batch transaction (report_ingest, batch_transaction)
        with self._db.transaction():
            for d, s, t in rows:
                self._db.insert("report_sent_bundles",
                                {"device_id": d, "sha256": s, "first_sent_at": t},
                                ignore_pk=("device_id", "sha256"))

    def has_sent(self) -> bool:
        """Whether any sent bundle is recorded (a new book has none)."""
        with self._lock:
            return bool(self._db.select("report_sent_bundles", columns="1", limit=1))

    def was_sent(self, *, device_id: str, sha256: str) -> bool:
        with self._lock:
            if (device_id, sha256) in self._known_sent:
                return True
            found = self._db.get("report_sent_bundles",
                                 {"device_id": device_id, "sha256": sha256}) is not None
            if found:
                if len(self._known_sent) >= KNOWN_SENT_MAX:
                    self._known_sent.clear()
                self._known_sent.add((device_id, sha256))
            return found

    def state_seq(self, *, device_id: str) -> int:
        """The seq of the newest online state kept from the device (-1: none yet)."""
        with self._lock:
            seq = self._db.scalar("SELECT seq FROM report_state_seqs WHERE device_id = ?",
                                  [device_id])
        return -1 if seq is None else int(seq)

    def set_state_seq(self, *, device_id: str, seq: int) -> None:
        with self._lock:
            self._db.run(_KEEP_NEWER_SEQ, [device_id, seq])

    def import_legacy(self, data_root: Path) -> int:
        """Copy ``DATA/report_book.db`` (a server before the shared tables) in, keeping
        what is already there (the newer seq of each device), then rename it ``.imported``;
        returns the rows read."""
        path = Path(data_root) / LEGACY_FILE
        if not path.exists():
            return 0
        try:
            old = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True)  # never made
            try:
                sent = old.execute("SELECT device_id, sha256, first_sent_at "
                                   "FROM report_sent_bundles").fetchall()
                seqs = old.execute("SELECT device_id, seq FROM report_state_seqs").fetchall()
            finally:
                old.close()
        except sqlite3.Error as e:
            if not path.exists():
                return 0  # another server sharing the data directory imported it just now
            raise FleetError(f"cannot import the report book {path}: {e}") from e
        with self._lock, self._db.transaction():
            for d, s, t in sent:
                self._db.insert("report_sent_bundles",
                                {"device_id": d, "sha256": s, "first_sent_at": t},
                                ignore_pk=("device_id", "sha256"))
            for d, q in seqs:
                self._db.run(_KEEP_NEWER_SEQ, [d, int(q)])
        with contextlib.suppress(FileNotFoundError):  # or another server renamed it
            path.rename(path.with_name(LEGACY_FILE + ".imported"))
        for side in SIDE_FILES:
            path.with_name(LEGACY_FILE + side).unlink(missing_ok=True)
        return len(sent) + len(seqs)


def instruction_hashes(envelope: bytes) -> list[str]:
    """The bundle and shadow-candidate hashes a signed instruction envelope names (the
    server's own bytes; [] when they do not parse)."""
    try:
        payload = json.loads(base64.b64decode(json.loads(envelope)["payload"]))
        refs = (payload.get("bundle"), payload.get("shadow"))
        return [str(r["sha256"]) for r in refs if isinstance(r, dict) and r.get("sha256")]
    except (ValueError, KeyError, TypeError, AttributeError):
        return []
