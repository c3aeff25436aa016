"""The registry schema's revision: Alembic migrations (``fleet_server/migrations``), checked
before the server uses a database and applied by ``fleet-server db upgrade``.

- An empty database (no tables at all) is given the whole schema: the first ``serve`` on a
  new data directory still just works.
- A database at the code's head revision is used as it is.
- Any other database is refused with ``DatabaseError`` naming its revision and the code's:
  too old (an older revision, or a registry made before versioned migrations) -> run
  ``fleet-server db upgrade``; too new (a revision this code does not know) -> run the newer
  fleet-server. Nothing ever upgrades an existing schema silently (docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

from fleet_server.db import Database, DatabaseError

_LOCK_KEY = 0x6564676566  # "edgef": serialises schema changes between replicas (PostgreSQL)
VERSION_TABLE = "alembic_version"


def _config(connection: sa.Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "fleet_server:migrations")
    cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=1)
def head() -> str:
    """The newest revision this code knows."""
    rev = ScriptDirectory.from_config(_config()).get_current_head()
    if rev is None:
        raise RuntimeError("no migrations packaged in fleet_server.migrations")
    return rev


@dataclass(frozen=True)
class SchemaState:
    current: str | None  # the database's revision, None when it has none
    head: str  # the code's
    has_tables: bool  # any table besides Alembic's own

    @property
    def empty(self) -> bool:
        return self.current is None and not self.has_tables

    @property
    def known(self) -> bool:
        if self.current is None:
            return True
        try:
            return ScriptDirectory.from_config(_config()).get_revision(self.current) is not None
        except CommandError:
            return False


def _state(conn: sa.Connection) -> SchemaState:
    current = MigrationContext.configure(conn).get_current_revision()
    tables = set(sa.inspect(conn).get_table_names()) - {VERSION_TABLE}
    return SchemaState(current=current, head=head(), has_tables=bool(tables))


def _lock(conn: sa.Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})


@contextmanager
def _reaching(db: Database) -> Iterator[None]:
    """A database that cannot be reached (refused, bad password, no such database) is one
    line naming it, not a driver traceback."""
    try:
        yield
    except sa.exc.DBAPIError as e:
        reason = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
        raise DatabaseError(f"{db}: cannot use the database: {reason}") from e


def state(db: Database) -> SchemaState:
    with _reaching(db), db.engine.connect() as conn:
        return _state(conn)


def problem(st: SchemaState, *, where: str) -> str | None:
    """Why a database at ``st`` cannot be used by this code, or None when it can."""
    fix = f"run `fleet-server db upgrade {where}` (back it up first)"
    if st.current == st.head:
        return None
    if st.current is None:
        if not st.has_tables:
            return f"the database has no schema yet; {fix}"
        return (f"the database schema is too old: it has no revision (a registry made before "
                f"versioned migrations), this fleet-server needs revision {st.head}; {fix}")
    if not st.known:
        return (f"the database schema is too new: revision {st.current} is unknown to this "
                f"fleet-server, whose newest is {st.head}; run the fleet-server version that "
                "upgraded it (or a newer one)")
    return (f"the database schema is too old: revision {st.current}, this fleet-server needs "
            f"revision {st.head}; {fix}")


def ensure(db: Database, *, where: str = "") -> SchemaState:
    """Give an empty database the schema; refuse (``DatabaseError``) one at another revision."""
    where = where or _where(db)
    current = _fast_revision(db)
    if current is not None and current == head():
        return SchemaState(current=current, head=current, has_tables=True)
    with _reaching(db), db.engine.begin() as conn:
        _lock(conn)
        st = _state(conn)
        if st.empty:
            _upgrade(conn, "head")
            return _state(conn)
    why = problem(st, where=where)
    if why is not None:
        raise DatabaseError(f"{db}: {why}")
    return st


def upgrade(db: Database) -> tuple[SchemaState, SchemaState]:
    """Apply every migration up to head; returns the states before and after. A schema
    newer than this code is refused and left alone."""
    with _reaching(db), db.engine.begin() as conn:
        _lock(conn)
        before = _state(conn)
        if not before.known:
            raise DatabaseError(f"{db}: {problem(before, where='')}")
        if before.current != before.head:
            _upgrade(conn, "head")
        return before, _state(conn)


def _fast_revision(db: Database) -> str | None:
    """The revision in one query (every start of a server at head), None when unsure."""
    try:
        with db.engine.connect() as conn:
            return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()  # noqa: S608 - a constant
    except sa.exc.DBAPIError:
        return None


def _upgrade(conn: sa.Connection, target: str) -> None:
    command.upgrade(_config(conn), target)


def _where(db: Database) -> str:
    if db.dialect == "sqlite":
        return f"--db {db.engine.url.render_as_string(hide_password=True)}"
    return "--db URL"
