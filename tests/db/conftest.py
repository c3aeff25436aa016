"""The registry database on both engines: SQLite (a file, as served by default) and
PostgreSQL (a real server: ``EDGEFLEET_TEST_POSTGRES_URL``, which ``.ci/run`` sets, or a
throwaway cluster started here with ``scripts/postgres-throwaway.sh`` when Debian's
PostgreSQL binaries are installed; otherwise the PostgreSQL half is skipped, saying why).

``db`` is one store-level database per test, at the schema's head and empty, on each engine:
every store test that takes it runs twice. ``empty_url`` is a brand-new database with no
schema at all, for the migration tests.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from fleet_server.db import Database, open_database, sqlite_url

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ("sqlite", "postgresql")
ENV = "EDGEFLEET_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server whose ``postgres`` database may create databases."""
    url = os.environ.get(ENV)
    if url:
        yield url
        return
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb") and not shutil.which("initdb"):
        pytest.skip(f"PostgreSQL not available: set {ENV} or install Debian's postgresql "
                    "(scripts/install-system-deps.sh)")
    # not under pytest's base temp: that is private to this user, and as root the cluster
    # runs as `postgres`, which must reach its directory
    where = Path(tempfile.mkdtemp(prefix="edgefleet-pg-"))
    script = ROOT / "scripts" / "postgres-throwaway.sh"
    started = subprocess.run(["bash", str(script), "start", str(where)], capture_output=True,
                             text=True, timeout=120, check=False)
    if started.returncode != 0:
        pytest.fail(f"could not start a throwaway PostgreSQL: {started.stderr.strip()}")
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run(["bash", str(script), "stop", str(where)], capture_output=True,
                       timeout=120, check=False)


def _admin(url: str) -> sa.Engine:
    return sa.create_engine(sa.make_url(url).set(drivername="postgresql+psycopg"),
                            isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def postgres_databases(postgres_server: str) -> Iterator[object]:
    """Makes (and at the end drops) uniquely named databases on the server."""
    admin = _admin(postgres_server)
    made: list[str] = []

    def make() -> str:
        name = f"edgefleet_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return sa.make_url(postgres_server).set(database=name).render_as_string(
            hide_password=False)

    yield make
    with admin.connect() as conn:
        for name in made:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=ENGINES)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new database with nothing in it, on each engine."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "registry.db")
    return request.getfixturevalue("postgres_databases")()  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def _head_templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return {}


@pytest.fixture(params=ENGINES)
def db(request: pytest.FixtureRequest, tmp_path: Path,
       _head_templates: dict[str, object]) -> Iterator[Database]:
    """An empty registry database at the schema's head: SQLite, a copy of a file migrated
    once per session; PostgreSQL, one database migrated once and emptied before each test
    (serial ids restart at 1)."""
    if request.param == "sqlite":
        if "sqlite" not in _head_templates:
            template = Path(str(request.getfixturevalue("tmp_path_factory").mktemp("head"))) \
                / "registry.db"
            open_database(template).close()
            _head_templates["sqlite"] = template
        path = tmp_path / "registry.db"
        shutil.copyfile(str(_head_templates["sqlite"]), path)
        database = open_database(path)
    else:
        if "postgresql" not in _head_templates:
            url = request.getfixturevalue("postgres_databases")()
            open_database(url).close()
            _head_templates["postgresql"] = url
        database = Database(str(_head_templates["postgresql"]))
        with database.transaction():  # empty it (DELETE: faster than TRUNCATE on small tables)
            for (name,) in database.tuples("SELECT tablename FROM pg_tables WHERE schemaname = "
                                           "'public' AND tablename <> 'alembic_version'"):
                database.run(f"DELETE FROM {name}")  # noqa: S608 - catalogue names
            for (seq,) in database.tuples("SELECT sequencename FROM pg_sequences"):
                database.scalar("SELECT setval(?, 1, false)", [seq])
    try:
        yield database
    finally:
        database.close()
