"""What the server remembers to verify device-signed reports (``report_verify``): the
bundles it sent each device, and the seq of the last online state it kept from each.

Two small tables in their own SQLite file, ``DATA/report_book.db`` (WAL, 0600), apart from
the registry so they follow neither its engine nor its migrations:

- ``report_sent_bundles (device_id, sha256, first_sent_at)``: every bundle hash an
  instruction to the device named, as its bundle or as its shadow candidate; recorded when
  the instruction is published (and again for every current instruction when the bridge
  connects), kept for good: a report about the previous bundle may arrive long after the
  device moved on. A new book on an existing registry is filled once from the deployments
  (``MqttBridge.backfill_sent``).
- ``report_state_seqs (device_id, seq)``: the seq of the newest signed online state kept.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from fleet_server.db import make_private

__all__ = ["ReportBook", "instruction_hashes"]

FILE_NAME = "report_book.db"


class ReportBook:
    def __init__(self, path: Path | None = None) -> None:
        """``path``: the book's SQLite file; ``None`` keeps it in memory (a bridge built
        without a server, in tests)."""
        if path is not None:
            make_private(Path(path))
        self._conn = sqlite3.connect(":memory:" if path is None else str(path),
                                     check_same_thread=False, timeout=30)
        self._lock = threading.Lock()
        with self._lock, self._conn:
            if path is not None:
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS report_sent_bundles (device_id TEXT NOT NULL, "
                "sha256 TEXT NOT NULL, first_sent_at REAL, PRIMARY KEY (device_id, sha256))")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS report_state_seqs (device_id TEXT PRIMARY KEY, "
                "seq INTEGER NOT NULL)")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def record_sent(self, sent: Iterable[tuple[str, str]]) -> None:
        """Remember ``(device_id, sha256)`` pairs (already known ones are kept as they are)."""
        rows = [(d, s, time.time()) for d, s in sent]
        if not rows:
            return
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT OR IGNORE INTO report_sent_bundles (device_id, sha256, first_sent_at) "
                "VALUES (?, ?, ?)", rows)

    def has_sent(self) -> bool:
        """Whether any sent bundle is recorded (a new book has none)."""
        with self._lock:
            return self._conn.execute("SELECT 1 FROM report_sent_bundles LIMIT 1").fetchone() \
                is not None

    def was_sent(self, *, device_id: str, sha256: str) -> bool:
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM report_sent_bundles WHERE device_id = ? AND sha256 = ?",
                [device_id, sha256]).fetchone()
        return row is not None

    def state_seq(self, *, device_id: str) -> int:
        """The seq of the newest online state kept from the device (-1: none yet)."""
        with self._lock:
            row = self._conn.execute("SELECT seq FROM report_state_seqs WHERE device_id = ?",
                                     [device_id]).fetchone()
        return -1 if row is None else int(row[0])

    def set_state_seq(self, *, device_id: str, seq: int) -> None:
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT INTO report_state_seqs (device_id, seq) VALUES (?, ?) ON CONFLICT "
                "(device_id) DO UPDATE SET seq = max(seq, excluded.seq)", [device_id, seq])


def instruction_hashes(envelope: bytes) -> list[str]:
    """The bundle and shadow-candidate hashes a signed instruction envelope names (the
    server's own bytes; [] when they do not parse)."""
    try:
        payload = json.loads(base64.b64decode(json.loads(envelope)["payload"]))
        refs = (payload.get("bundle"), payload.get("shadow"))
        return [str(r["sha256"]) for r in refs if isinstance(r, dict) and r.get("sha256")]
    except (ValueError, KeyError, TypeError, AttributeError):
        return []
