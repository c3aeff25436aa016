"""``fleet-server db``: the registry schema's revision and moving a SQLite registry to
PostgreSQL. Runs on the database directly (no server needed); errors become one line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fleet_server import schema
from fleet_server.datadir import REGISTRY
from fleet_server.db import Database, DatabaseError, sqlite_url
from fleet_server.sqlite_import import copy_sqlite_registry


def add_target_flags(parser: argparse.ArgumentParser) -> None:
    """``--data DIR`` (its SQLite registry) or ``--db URL``: the database a command runs on."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", type=Path, help="data directory (its SQLite registry)")
    where.add_argument("--db", metavar="URL",
                       help="database URL: postgresql://USER[:PASS]@HOST:PORT/NAME or "
                            "sqlite:///PATH")


def target_url(args: argparse.Namespace) -> str:
    if args.db:
        return str(args.db)
    path = Path(args.data) / REGISTRY
    if not path.exists():
        raise DatabaseError(f"no registry at {path}")
    return sqlite_url(path)


def add_parser(sub: Any) -> None:
    db = sub.add_parser("db", help="registry schema migrations (Alembic) and SQLite -> "
                        "PostgreSQL migration")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply the schema migrations up to this version's")
    add_target_flags(up)
    status = db_sub.add_parser("status", help="the database's schema revision and the code's; "
                               "exit 1 unless they are the same")
    add_target_flags(status)
    status.add_argument("--json", action="store_true")
    mig = db_sub.add_parser("migrate-from-sqlite",
                            help="copy a SQLite registry into an empty PostgreSQL database")
    mig.add_argument("path", type=Path, metavar="PATH", help="the SQLite registry (DATA/registry.db)")
    mig.add_argument("--db", required=True, metavar="URL", help="postgresql://... (the target)")
    mig.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.db_command == "migrate-from-sqlite":
        counts = copy_sqlite_registry(args.path, args.db)
        if args.json:
            print(json.dumps({"tables": counts, "rows": sum(counts.values())}, indent=2,
                             sort_keys=True))
        else:
            width = max(len(t) for t in counts)
            for table, n in sorted(counts.items()):
                print(f"{table.ljust(width)}  {n}")
            print(f"copied {sum(counts.values())} rows in {len(counts)} tables; every count "
                  "matches the source")
        return 0
    db = Database(target_url(args))
    try:
        if args.db_command == "upgrade":
            before, after = schema.upgrade(db)
            if before.current == after.current:
                print(f"{db}: already at revision {after.current}")
            else:
                print(f"{db}: upgraded from revision {before.current or 'none'} to "
                      f"{after.current}")
            return 0
        st = schema.state(db)
        why = schema.problem(st, where="")
        if args.json:
            print(json.dumps({"current": st.current, "head": st.head, "ok": why is None},
                             indent=2, sort_keys=True))
        else:
            print(f"{db}: revision {st.current or 'none'}, this fleet-server's is {st.head}"
                  + ("" if why is None else f" ({why.split(';')[0]})"))
        return 0 if why is None else 1
    finally:
        db.close()
