"""The registry's SQLite file, opened one way for every store that keeps state in it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils


def open_database(path: Path) -> sqlite_utils.Database:
    """Open ``path`` in WAL mode for use from several threads (callers serialise writes)."""
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
    db = sqlite_utils.Database(conn)
    db.enable_wal()
    return db
