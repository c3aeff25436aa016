"""The registry database, one engine-neutral layer for every store that keeps state in it.

``Database`` wraps a SQLAlchemy engine: SQLite (the default, a file in the data directory,
WAL) or PostgreSQL (``--db postgresql://...``, psycopg 3). Stores write plain SQL that both
engines accept, with ``?`` placeholders (a list of values) or ``:name`` ones (a dict); the
few places where the engines differ (JSON paths, the change cursor) ask ``dialect``.
Every call runs in its own short transaction unless it is inside ``with db.transaction():``
(per thread), which commits once at the end or rolls everything back on an exception.
The schema is Alembic's (``fleet_server.schema``), never created here.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from fleet_server.errors import FleetError

Row = dict[str, Any]
Params = Sequence[Any] | Mapping[str, Any] | None


class DatabaseError(FleetError):
    """The database URL is unusable, the database cannot be reached, or its schema is not the
    one this version of the server needs."""


SIDE_FILES = ("-wal", "-shm", "-journal")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
INSERT_ROWS = 500
"""Rows per multi-row INSERT (``insert_many``): within SQLite's 32,766 and PostgreSQL's
65,535 parameters for any table here."""


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def make_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if absent, else chmod it 0600.

    The registry holds device secret hashes, enrolment token hashes and the audit log: only the
    server's user may read it. SQLite creates the ``-wal`` and ``-shm`` files with the mode of
    the database file, so they follow."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """WAL and ``synchronous=NORMAL`` on every new SQLite connection.

    ``synchronous=NORMAL`` is SQLite's recommended setting with WAL: the database stays
    consistent across a crash or power cut, and only the last transactions before a power cut
    may be lost; it drops the fsync of every commit (0.41 ms -> 0.10 ms a write measured here)."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _engine(url: str) -> Engine:
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as e:
        raise DatabaseError(f"bad database URL {url!r}: want postgresql://USER@HOST:PORT/NAME "
                            "or sqlite:///PATH") from e
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise DatabaseError("a SQLite registry must be a file: sqlite:///PATH")
        path = Path(parsed.database)
        make_private(path)
        engine = sa.create_engine(parsed, connect_args={"check_same_thread": False,
                                                        "timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        with engine.connect():  # WAL is on: its side files get the database's mode
            pass
        for suffix in SIDE_FILES:
            side = path.with_name(path.name + suffix)
            if side.exists():
                side.chmod(0o600)
        return engine
    if backend == "postgresql":
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        return sa.create_engine(parsed, pool_pre_ping=True)
    raise DatabaseError(f"unsupported database {backend!r} in {url!r}: use postgresql:// "
                        "or sqlite:///")


_NAMED = re.compile(r"(?<![:\w]):(\w+)")


@lru_cache(maxsize=2048)
def _pyformat(sql: str) -> str:
    """Our placeholders in psycopg's style: ``?`` -> ``%s``, ``:name`` -> ``%(name)s``
    (``::type`` casts are left alone), a literal ``%`` doubled. Our SQL never has ``?`` or
    ``:word`` inside a string literal."""
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%")).replace("?", "%s")


def _native(dialect: str, sql: str, params: Params) -> tuple[str, Any]:
    """The statement and parameters as the DB-API driver takes them: sqlite3 reads ``?`` and
    ``:name`` itself; psycopg wants pyformat."""
    if params is None:
        params = ()
    elif not isinstance(params, Mapping):
        params = tuple(params)
    if dialect == "postgresql":
        return _pyformat(sql), params
    return sql, params


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list of values per column (``unnest``'s arrays)."""
    return [[row[i] for row in rows] for i in range(width)]


def _name(identifier: str) -> str:
    if not _IDENT.match(identifier):
        raise ValueError(f"not a plain SQL identifier: {identifier!r}")
    return identifier


class Database:
    """One registry database (SQLite file or PostgreSQL), shared by the stores."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _engine(url)
        self.dialect: str = self.engine.dialect.name  # "sqlite" or "postgresql"
        self._local = threading.local()
        self._driver_errors: tuple[type[Exception], ...] = (
            (self.engine.dialect.dbapi.OperationalError,) if self.engine.dialect.dbapi else ())
        self._marker_lock = threading.Lock()
        self._marker_conn: Any = None
        self._column_types: dict[str, dict[str, str]] = {}  # table -> column -> udt name

    def __str__(self) -> str:
        """The URL without its password (what messages name)."""
        url = self.engine.url
        return url.set(drivername=url.get_backend_name()).render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"Database({self})"

    def close(self) -> None:
        with self._marker_lock:
            if self._marker_conn is not None:
                self._marker_conn.close()
                self._marker_conn = None
        self.engine.dispose()

    # -- transactions ------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """Every call in this thread inside the block is one transaction (nesting joins it)."""
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        try:
            with self.engine.begin() as conn:
                self._local.conn = conn
                try:
                    yield conn
                finally:
                    self._local.conn = None
        except sa.exc.OperationalError as e:
            raise DatabaseError(f"database error: {e.orig}") from e

    @contextmanager
    def _cursor(self, sql: str, params: Params, *, native: bool = False) -> Iterator[Any]:
        """Run one statement on the DB-API cursor of this thread's transaction (SQLAlchemy
        holds the pool and the transaction; the statement goes to the driver as it is,
        without the result metadata ``text()`` builds for every statement)."""
        with self.transaction() as conn:
            cur = conn.connection.cursor()
            try:
                cur.execute(*((sql, params) if native else _native(self.dialect, sql, params)))
                yield cur
            except self._driver_errors as e:
                raise DatabaseError(f"database error: {e}") from e
            finally:
                cur.close()

    # -- plain SQL ---------------------------------------------------------------------
    def rows(self, sql: str, params: Params = None) -> list[Row]:
        with self._cursor(sql, params) as cur:
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def tuples(self, sql: str, params: Params = None, *, native: bool = False,
               ) -> list[tuple[Any, ...]]:
        """``native``: ``sql`` is already in the driver's own placeholder style."""
        with self._cursor(sql, params, native=native) as cur:
            return [tuple(r) for r in cur.fetchall()]

    def first(self, sql: str, params: Params = None) -> tuple[Any, ...] | None:
        with self._cursor(sql, params) as cur:
            row = cur.fetchone()
            return None if row is None else tuple(row)

    def scalar(self, sql: str, params: Params = None) -> Any:
        row = self.first(sql, params)
        return None if row is None else row[0]

    def run(self, sql: str, params: Params = None, *, native: bool = False) -> int:
        """Execute a write; returns the number of rows it touched."""
        with self._cursor(sql, params, native=native) as cur:
            return int(cur.rowcount)

    # -- one table ---------------------------------------------------------------------
    def insert(self, table: str, row: Row, *, ignore_pk: Sequence[str] | None = None) -> int:
        """Insert ``row``; with ``ignore_pk`` a row whose key exists is left alone (returns 0)."""
        cols = [_name(c) for c in row]
        sql = (f"INSERT INTO {_name(table)} ({', '.join(cols)}) "  # noqa: S608 - identifiers checked by _name
               f"VALUES ({', '.join(':' + c for c in cols)})")
        if ignore_pk:
            sql += f" ON CONFLICT ({', '.join(_name(c) for c in ignore_pk)}) DO NOTHING"
        return self.run(sql, row)

    def insert_many(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *,
                    ignore_pk: Sequence[str], returning: Sequence[str]) -> list[tuple[Any, ...]]:
        """Insert ``rows`` (values in ``columns``' order), leaving alone a row whose key
        exists; the ``returning`` columns of the rows inserted. SQLite: multi-row ``VALUES``
        statements (>= 3.35); PostgreSQL: one array per column through ``unnest``, so the
        statement's text is the same whatever the number of rows (psycopg neither re-parses
        it nor PostgreSQL re-plans it: ``_unnest``), sent in binary (no array escaping)."""
        cols = [_name(c) for c in columns]
        head = f"INSERT INTO {_name(table)} ({', '.join(cols)}) "
        tail = (f" ON CONFLICT ({', '.join(_name(c) for c in ignore_pk)}) DO NOTHING "
                f"RETURNING {', '.join(_name(c) for c in returning)}")
        out: list[tuple[Any, ...]] = []
        for at in range(0, len(rows), INSERT_ROWS):
            part = rows[at:at + INSERT_ROWS]
            if self.dialect == "postgresql":
                out += self.tuples(f"{head}SELECT * FROM {self._unnest(table, cols)}{tail}",  # noqa: S608 - identifiers checked by _name
                                   _columns(part, len(cols)), native=True)
            else:
                one = "(" + ", ".join("?" * len(cols)) + ")"
                out += self.tuples(head + "VALUES " + ", ".join([one] * len(part)) + tail,
                                   [v for row in part for v in row])
        return out

    def update_many(self, table: str, key: str, columns: Sequence[str],
                    rows: Sequence[Sequence[Any]]) -> None:
        """Set ``columns`` on each row whose ``key`` is the row's first value (then the
        columns' values): SQLite, ``WITH v AS (VALUES ...) UPDATE ... FROM v`` (>= 3.33);
        PostgreSQL, ``UPDATE ... FROM unnest(...)`` (one array per column)."""
        cols = [_name(c) for c in columns]
        names = [_name(key), *cols]
        t, k = _name(table), _name(key)
        sets = ", ".join(f"{c} = v.{c}" for c in cols)
        for at in range(0, len(rows), INSERT_ROWS):
            part = rows[at:at + INSERT_ROWS]
            if self.dialect == "postgresql":
                self.run(f"UPDATE {t} SET {sets} FROM {self._unnest(table, names)} "  # noqa: S608 - identifiers checked by _name
                         f"AS v({', '.join(names)}) WHERE {t}.{k} = v.{k}",
                         _columns(part, len(names)), native=True)
            else:
                one = "(" + ", ".join("?" * len(names)) + ")"
                self.run(f"WITH v({', '.join(names)}) AS (VALUES {', '.join([one] * len(part))}) "  # noqa: S608 - identifiers checked by _name
                         f"UPDATE {t} SET {sets} FROM v WHERE {t}.{k} = v.{k}",
                         [v for row in part for v in row])

    def in_list(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``column IN (...)`` for ``values`` and its parameters: one array parameter on
        PostgreSQL (``= ANY(?)``: the same statement text for any number of values)."""
        if self.dialect == "postgresql":
            return f"{_name(column)} = ANY(?)", [list(values)]
        return f"{_name(column)} IN ({', '.join('?' * len(values))})", list(values)

    def _unnest(self, table: str, columns: Sequence[str]) -> str:
        """``unnest(%b::type[], ...)`` for ``columns`` of ``table`` (PostgreSQL, in psycopg's
        placeholders: ``native``), each array sent in binary (text arrays in the text format
        cost a regex escape per element) and cast to its column's type (read once from the
        catalogue)."""
        types = self._column_types.get(table)
        if types is None:
            types = dict(self.tuples(
                "SELECT column_name, udt_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = ?", [table]))
            self._column_types[table] = types
        return "unnest(" + ", ".join(f"%b::{_name(types[c])}[]" for c in columns) + ")"

    def upsert(self, table: str, row: Row, *, pk: Sequence[str]) -> None:
        """Insert ``row`` or update the other columns of the row with its key."""
        cols = [_name(c) for c in row]
        keys = [_name(c) for c in pk]
        sets = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in keys)
        self.run(f"INSERT INTO {_name(table)} ({', '.join(cols)}) "  # noqa: S608 - identifiers checked by _name
                 f"VALUES ({', '.join(':' + c for c in cols)}) "
                 f"ON CONFLICT ({', '.join(keys)}) "
                 + (f"DO UPDATE SET {sets}" if sets else "DO NOTHING"), row)

    def update(self, table: str, key: Row, changes: Row) -> int:
        """Set ``changes`` on the row(s) matching ``key`` (column -> value); rows touched."""
        if not changes:
            return 0
        sets = ", ".join(f"{_name(c)} = :s_{c}" for c in changes)
        where = " AND ".join(f"{_name(c)} = :k_{c}" for c in key)
        params = {**{f"s_{c}": v for c, v in changes.items()},
                  **{f"k_{c}": v for c, v in key.items()}}
        return self.run(f"UPDATE {_name(table)} SET {sets} WHERE {where}", params)  # noqa: S608 - identifiers checked by _name

    def get(self, table: str, key: Row) -> Row | None:
        """The row matching ``key`` (column -> value), or None."""
        where = " AND ".join(f"{_name(c)} = :{c}" for c in key)
        found = self.rows(f"SELECT * FROM {_name(table)} WHERE {where}", key)  # noqa: S608 - identifiers checked by _name
        return found[0] if found else None

    def select(self, table: str, where: str | None = None, params: Params = None, *,
               order_by: str | None = None, limit: int | None = None,
               columns: str = "*") -> list[Row]:
        """``SELECT columns FROM table [WHERE where] [ORDER BY ...] [LIMIT n]``; ``where``,
        ``order_by`` and ``columns`` are the caller's constant SQL, values go in ``params``."""
        sql = f"SELECT {columns} FROM {_name(table)}"  # noqa: S608 - constant fragments from the stores
        if where:
            sql += f" WHERE {where}"
        if order_by:
            sql += f" ORDER BY {order_by}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self.rows(sql, params)

    def count(self, table: str, where: str | None = None, params: Params = None) -> int:
        sql = f"SELECT count(*) FROM {_name(table)}" + (f" WHERE {where}" if where else "")  # noqa: S608 - constant fragments from the stores
        return int(self.scalar(sql, params))

    def next_counter(self, name: str) -> int:
        """Add one to the named counter (made at 1) and return it, in one statement."""
        return int(self.scalar(
            "INSERT INTO counters (name, value) VALUES (?, 1) ON CONFLICT (name) "
            "DO UPDATE SET value = counters.value + 1 RETURNING value", [name]))

    # -- where the engines differ ---------------------------------------------------------
    def change_marker(self) -> str:
        """A value that changes whenever any connection (this process's or another's) commits
        a write. SQLite: ``PRAGMA data_version`` on a connection of its own that never writes
        (it changes with every commit made by the other connections). PostgreSQL: the next
        transaction id, which every writing transaction takes (cluster-wide, so another
        database's writes change it too: a spurious change, never a missed one)."""
        if self.dialect == "postgresql":
            return str(self.scalar("SELECT txid_snapshot_xmax(txid_current_snapshot())"))
        with self._marker_lock:
            if self._marker_conn is None:
                self._marker_conn = self.engine.raw_connection()
            cur = self._marker_conn.cursor()
            try:
                cur.execute("PRAGMA data_version")
                return str(cur.fetchone()[0])
            finally:
                cur.close()

    def json_doc(self, column: str) -> str:
        """SQL for a JSON text column as a document the path helpers read (PostgreSQL parses
        it to ``jsonb`` once; the helpers' own cast of a ``jsonb`` is free)."""
        return f"({column})::jsonb" if self.dialect == "postgresql" else column

    def json_text(self, column: str, path: str) -> str:
        """SQL for the value at ``path`` (``a.b``) of a JSON text column: text, a number or
        JSON text (objects) on SQLite, text on PostgreSQL (compare with strings or cast)."""
        if self.dialect == "postgresql":
            return f"(({column})::jsonb #>> '{{{path.replace('.', ',')}}}')"
        return f"json_extract({column}, '$.{path}')"

    def json_number(self, column: str, path: str) -> str:
        if self.dialect == "postgresql":
            return f"({self.json_text(column, path)})::double precision"
        return self.json_text(column, path)

    def json_true(self, column: str, path: str) -> str:
        """SQL that is true when the value at ``path`` is JSON ``true`` (or 1)."""
        if self.dialect == "postgresql":
            return f"({self.json_text(column, path)} IN ('true', '1'))"
        return f"({self.json_text(column, path)} = 1)"

    def json_false(self, column: str, path: str) -> str:
        """SQL that is true when the value at ``path`` is JSON ``false`` (or 0); a missing
        value is neither true nor false."""
        if self.dialect == "postgresql":
            return f"({self.json_text(column, path)} IN ('false', '0'))"
        return f"({self.json_text(column, path)} = 0)"


def open_database(target: Database | Path | str) -> Database:
    """A ``Database`` for a URL, a SQLite file path or an open ``Database`` (returned as is).
    A new, empty database gets the schema; one at another revision is refused
    (``fleet_server.schema.check``)."""
    if isinstance(target, Database):
        return target
    from fleet_server import schema  # the Alembic glue imports this module

    url = target if isinstance(target, str) and "://" in target else sqlite_url(Path(target))
    db = Database(url)
    try:
        schema.ensure(db)
    except BaseException:
        db.close()
        raise
    return db
