"""The leader lease: which replica runs the periodic jobs (rollout driver, retention).

One row of ``leases`` per lease, written only by compare-and-set statements timed by the
database's own clock, so replicas on machines whose clocks disagree still agree:

- **acquire**: ``UPDATE ... SET holder = me, epoch = epoch + 1, expires_at = now + ttl
  WHERE expires_at < now``: only a lapsed lease is taken, and each taking has a new epoch;
- **renew**: ``UPDATE ... SET expires_at = now + ttl WHERE holder = me AND epoch = mine AND
  expires_at >= now``: a lease that lapsed is never revived (it is re-acquired, with a new
  epoch);
- **fence** (``Lease.fenced``): every write of the leader that drives devices runs in a
  transaction whose first statement is ``UPDATE leases SET holder = holder WHERE holder = me
  AND epoch = mine AND expires_at >= now``. It locks the lease row (PostgreSQL) or the
  database (SQLite) until the transaction ends, so no other replica can take the lease while
  the write is being made, and it matches no row once the lease lapsed or changed hands: the
  transaction is then rolled back with ``LeaseLost``. A leader paused past its TTL (a stopped
  process, a long GC, a partition) therefore cannot act when it wakes up.

A killed leader is replaced within ``ttl_s + renew_s`` (the lease lapses after at most
``ttl_s``; the others try every ``renew_s``); a leader that stops cleanly releases it, and the
next replica takes it at its next try. docs/scaling.md, "Replicas".
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fleet_server.db import Database, DatabaseError
from fleet_server.errors import FleetError

log = logging.getLogger(__name__)

LEADER = "leader"


class LeaseLost(FleetError):
    """A fenced write was refused: this replica no longer holds the lease it acted under."""


def db_now(db: Database) -> str:
    """SQL for the database clock's current time in seconds since the epoch."""
    if db.dialect == "postgresql":
        return "extract(epoch from clock_timestamp())"
    return "((julianday('now') - 2440587.5) * 86400.0)"


def holder_name(replica_id: str | None) -> str:
    """This process's name as a lease holder: a restarted replica is a new holder."""
    return f"{replica_id or 'server'}:{os.getpid()}:{secrets.token_hex(3)}"


class Lease:
    """One named lease held (or wanted) by this process; ``start()`` runs the acquire /
    renew loop on a thread, ``stop()`` releases it."""

    def __init__(self, db: Database, *, holder: str, ttl_s: float, renew_s: float,
                 name: str = LEADER,
                 on_acquired: Callable[[int], None] | None = None) -> None:
        if not 0 < renew_s < ttl_s:
            raise ValueError(f"lease renew interval {renew_s} s must be in (0, TTL {ttl_s} s)")
        self._db, self.name, self.holder = db, name, holder
        self.ttl_s, self.renew_s = ttl_s, renew_s
        self._on_acquired = on_acquired
        self.epoch: int | None = None
        self._valid_until = 0.0  # local monotonic time the lease surely lasts until
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._now = db_now(db)

    # -- the compare-and-set statements -------------------------------------------------
    def try_acquire(self) -> bool:
        """Take the lease if it lapsed (or was never held); True when this process holds it."""
        if self.is_leader():
            return True
        started = time.monotonic()
        with self._db.transaction():
            self._db.run("INSERT INTO leases (name, holder, epoch, expires_at, acquired_at) "
                         "VALUES (?, '', 0, 0, 0) ON CONFLICT (name) DO NOTHING", [self.name])
            epoch = self._db.scalar(
                f"UPDATE leases SET holder = ?, epoch = epoch + 1, "  # noqa: S608 - _now is constant SQL
                f"expires_at = {self._now} + ?, acquired_at = {self._now} "
                f"WHERE name = ? AND expires_at < {self._now} RETURNING epoch",
                [self.holder, self.ttl_s, self.name])
        if epoch is None:
            return False
        self.epoch, self._valid_until = int(epoch), started + self.ttl_s
        log.warning("lease %r: %s is the leader (epoch %d; TTL %.1f s, renewed every %.1f s)",
                    self.name, self.holder, self.epoch, self.ttl_s, self.renew_s)
        return True

    def renew(self) -> bool:
        """Extend a lease still held; False (and not the leader any more) otherwise."""
        if self.epoch is None:
            return False
        started = time.monotonic()
        renewed = self._db.run(
            f"UPDATE leases SET expires_at = {self._now} + ? WHERE name = ? AND holder = ? "  # noqa: S608 - _now is constant SQL
            f"AND epoch = ? AND expires_at >= {self._now}",
            [self.ttl_s, self.name, self.holder, self.epoch])
        if renewed != 1:
            log.warning("lease %r: lost by %s (epoch %d)", self.name, self.holder, self.epoch)
            self.epoch, self._valid_until = None, 0.0
            return False
        self._valid_until = started + self.ttl_s
        return True

    def release(self) -> None:
        """Give the lease up now (a clean stop): the next replica need not wait out the TTL."""
        if self.epoch is None:
            return
        self._db.run("UPDATE leases SET expires_at = 0 WHERE name = ? AND holder = ? "
                     "AND epoch = ?", [self.name, self.holder, self.epoch])
        self.epoch, self._valid_until = None, 0.0

    def is_leader(self) -> bool:
        """Whether this process holds the lease, by its own clock (the fence is the proof)."""
        return self.epoch is not None and time.monotonic() < self._valid_until

    @contextmanager
    def fenced(self) -> Iterator[None]:
        """A transaction that commits only while this process still holds the lease at the
        epoch it acquired; raises ``LeaseLost`` (nothing written) otherwise."""
        epoch = self.epoch
        if epoch is None:
            raise LeaseLost(f"{self.holder} does not hold the {self.name!r} lease")
        with self._db.transaction():
            held = self._db.run(
                f"UPDATE leases SET holder = holder WHERE name = ? AND holder = ? "  # noqa: S608 - _now is constant SQL
                f"AND epoch = ? AND expires_at >= {self._now}",
                [self.name, self.holder, epoch])
            if held != 1:
                raise LeaseLost(f"{self.holder} lost the {self.name!r} lease (epoch {epoch})")
            yield

    def current(self) -> dict[str, object] | None:
        """The lease row (holder, epoch, seconds left by the database's clock), or None."""
        rows = self._db.rows(f"SELECT holder, epoch, expires_at - {self._now} AS left_s "  # noqa: S608 - _now is constant SQL
                             "FROM leases WHERE name = ?", [self.name])
        return rows[0] if rows else None

    # -- the loop ---------------------------------------------------------------------------
    def start(self) -> Lease:
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        try:
            self.release()
        except DatabaseError as e:
            log.warning("lease %r: not released (%s); it lapses in %.1f s", self.name, e,
                        self.ttl_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                was = self.epoch
                if self.renew() or self.try_acquire():
                    if was != self.epoch and self.epoch is not None and self._on_acquired:
                        self._on_acquired(self.epoch)
            except Exception:  # a database outage: the lease lapses on its own clock
                log.exception("lease %r: renew/acquire failed", self.name)
            self._stop.wait(self.renew_s)
