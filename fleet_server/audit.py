"""The audit log: one table (``audit``) for every mutating action, whoever makes it.

A row says who (a user name, ``token:<name>``, ``bootstrap-admin``, or the rollout driver),
when, from where (the client address, None for the server's own decisions), what (an action
such as ``deployment.create`` and its subject) and a small JSON detail. The rollout driver
writes its decisions to the same table through ``RolloutStore.add_audit``; a request that
drives it runs inside ``from_client(address)`` so those rows carry the address too.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from fleet_server.db import Database, open_database

Row = dict[str, Any]

MAX_DETAIL_CHARS = 4096

_client: ContextVar[str | None] = ContextVar("audit_client", default=None)


@contextmanager
def from_client(address: str | None) -> Iterator[None]:
    """Audit rows written inside (in this thread) record ``address`` as where they came from."""
    token = _client.set(address)
    try:
        yield
    finally:
        _client.reset(token)


def current_client() -> str | None:
    return _client.get()


class AuditLog:
    def __init__(self, target: Database | Path | str) -> None:
        self._owned = not isinstance(target, Database)
        self._db = open_database(target)
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            if self._owned:
                self._db.close()

    def record(self, *, actor: str, action: str, subject: str, detail: dict[str, Any] | None = None,
               client: str | None = None) -> None:
        text = json.dumps(detail or {}, sort_keys=True, default=str)
        if len(text) > MAX_DETAIL_CHARS:
            text = json.dumps({"truncated": text[:MAX_DETAIL_CHARS]})
        with self._lock:
            self._db.insert("audit", {
                "ts": time.time(), "actor": actor, "action": action, "subject": subject,
                "detail": text, "client": client if client is not None else current_client()})

    def list(self, *, limit: int = 100, before: int | None = None, subject: str | None = None,
             actor: str | None = None, action: str | None = None) -> list[Row]:
        """Newest first; the next page is ``before=<the last row's id>``."""
        clauses: list[str] = []
        args: list[Any] = []
        for column, value in (("subject", subject), ("actor", actor), ("action", action)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if before is not None:
            clauses.append("id < ?")
            args.append(before)
        with self._lock:
            rows = self._db.select("audit", " AND ".join(clauses) or None, args,
                                   order_by="id DESC", limit=limit)
        out = []
        for r in rows:
            detail = json.loads(r["detail"]) if r.get("detail") else {}
            out.append({"id": r["id"], "ts": r["ts"], "actor": r["actor"],
                        "action": r["action"], "subject": r["subject"],
                        "client": r.get("client"), "detail": detail})
        return out
