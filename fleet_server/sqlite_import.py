"""Copy a SQLite registry into another database (``fleet-server db migrate-from-sqlite``).

The source is read with sqlite-utils, read-only; it must be at this code's schema revision
(``fleet-server db upgrade --data DIR`` first). The target gets the schema if it has none and
must hold no rows. Everything is copied in one transaction, table by table in batches; the
target's row counts are then checked against the source's, and any difference rolls the
whole copy back. Serial ``id`` columns (audit, decisions, gate history) continue after the
copied rows.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import sqlalchemy as sa
import sqlite_utils
from sqlalchemy.dialects.postgresql import JSONB

from fleet_server import schema
from fleet_server.db import Database, DatabaseError

BATCH = 1000


def _source(path: Path) -> sqlite_utils.Database:
    if not path.is_file():
        raise DatabaseError(f"no SQLite registry at {path}")
    try:
        conn = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
        src = sqlite_utils.Database(conn)
        tables = src.table_names()
    except sqlite3.DatabaseError as e:
        raise DatabaseError(f"{path} is not a readable SQLite database: {e}") from e
    revision = None
    if schema.VERSION_TABLE in tables:
        rows = list(src.table(schema.VERSION_TABLE).rows)
        revision = rows[0]["version_num"] if rows else None
    head = schema.head()
    if revision != head:
        conn.close()
        raise DatabaseError(
            f"{path} is at schema revision {revision or 'none'}, this fleet-server's is {head}: "
            f"run `fleet-server db upgrade --db sqlite:///{path.resolve()}` on it first")
    return src


def copy_sqlite_registry(path: Path, url: str) -> dict[str, int]:
    """Copy every table of the SQLite registry at ``path`` into the database at ``url``;
    returns the rows copied per table (each equal to the source's count)."""
    src = _source(Path(path))
    target = Database(url)
    try:
        schema.upgrade(target)
        names = [t for t in src.table_names() if t != schema.VERSION_TABLE]
        meta = sa.MetaData()
        with target.engine.begin() as conn:
            known = set(sa.inspect(conn).get_table_names())
            unknown = sorted(set(names) - known)
            if unknown:
                raise DatabaseError(f"the source has tables the schema does not: {unknown}")
            tables = {n: sa.Table(n, meta, autoload_with=conn) for n in names}
            busy = [n for n, t in tables.items()
                    if conn.execute(sa.select(sa.func.count()).select_from(t)).scalar()]
            if busy:
                raise DatabaseError(f"{target}: the target already holds rows in {busy}; "
                                    "migrate into an empty database")
            counts: dict[str, int] = {}
            for name, table in tables.items():
                columns = {c.name for c in table.columns}
                documents = [c.name for c in table.columns if isinstance(c.type, JSONB)]
                batch: list[dict[str, object]] = []
                for row in src.table(name).rows:
                    extra = set(row) - columns
                    if extra:
                        raise DatabaseError(f"{name} in the source has columns the schema "
                                            f"does not: {sorted(extra)}")
                    for col in documents:  # jsonb takes the document, not its text
                        if isinstance(row.get(col), str):
                            row[col] = json.loads(row[col])
                    batch.append(row)
                    if len(batch) == BATCH:
                        conn.execute(table.insert(), batch)
                        batch = []
                if batch:
                    conn.execute(table.insert(), batch)
                copied = int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()
                             or 0)
                expected = src.table(name).count
                if copied != expected:
                    raise DatabaseError(f"{name}: {copied} rows in the target, {expected} in "
                                        "the source; nothing was copied")
                counts[name] = copied
                if conn.dialect.name == "postgresql" and "id" in columns:
                    _continue_serial(conn, name)
        return counts
    finally:
        target.close()
        src.conn.close()


def _continue_serial(conn: sa.Connection, table: str) -> None:
    """Make a serial ``id`` continue after the copied rows (they carry their own ids)."""
    seq = conn.execute(sa.text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": table}).scalar()
    if seq is not None:
        conn.execute(sa.text(f"SELECT setval(:s, coalesce(max(id), 0) + 1, false) FROM {table}"),  # noqa: S608 - a table name the schema knows
                     {"s": seq})
