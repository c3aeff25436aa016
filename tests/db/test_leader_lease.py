"""The leader lease and its fencing on both engines (``db``: SQLite and PostgreSQL): two
replicas, each with its own connection pool (``Database``) on the same database.

A paused leader (one that stops renewing: a stopped process, a long pause) keeps the epoch
it acquired; once its lease lapsed and another replica took it, every write it tries under
that epoch is refused and leaves the database as it was."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from fleet_server.db import Database
from fleet_server.errors import ConflictError
from fleet_server.leader import Lease, LeaseLost
from fleet_server.registry import Registry

TTL_S, RENEW_S = 0.4, 0.1


@pytest.fixture()
def second(db: Database) -> Iterator[Database]:
    """Another replica's pool on the same database."""
    other = Database(db.url)
    yield other
    other.close()


def _take_when_lapsed(lease: Lease, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not lease.try_acquire():
        assert time.monotonic() < deadline, f"{lease.holder} never got the lapsed lease"
        time.sleep(RENEW_S / 2)


def _enrol(registry: Registry, device_id: str) -> None:
    registry.add_device(device_id=device_id, group="lab", public_key="pk",
                        mqtt_secret_hash="h")


def test_a_paused_leader_cannot_write_after_another_replica_took_its_lease(
        db: Database, second: Database) -> None:
    old = Lease(db, holder="r1", ttl_s=TTL_S, renew_s=RENEW_S)
    new = Lease(second, holder="r2", ttl_s=TTL_S, renew_s=RENEW_S)
    registry = Registry(db)
    _enrol(registry, "cam-1")
    assert old.try_acquire() and old.epoch == 1
    assert not new.try_acquire()  # held: not taken
    with old.fenced():  # the leader's write while it holds the lease
        seq = registry.issue_seq(device_id="cam-1", sha256="a" * 64, deployment_id="dep-1")
    assert seq == 1

    # the old leader pauses (no renewal); its lease lapses and r2 takes it, epoch 2
    _take_when_lapsed(new)
    assert (new.epoch, old.epoch) == (2, 1)
    with pytest.raises(LeaseLost, match="r1 lost the 'leader' lease"):
        with old.fenced():
            registry.issue_seq(device_id="cam-1", sha256="b" * 64, deployment_id="dep-2")
    device = registry.get_device(device_id="cam-1")
    assert (device["last_issued_seq"], device["desired_sha"]) == (1, "a" * 64)  # unchanged
    assert not old.renew() and not old.is_leader()  # it learns it lost, and stays out
    assert new.current() is not None and new.current()["holder"] == "r2"

    with new.fenced():  # the new leader's writes (through its own pool) go through
        assert Registry(second).issue_seq(device_id="cam-1", sha256="c" * 64,
                                  deployment_id="dep-3") == 2


def test_a_lease_changes_hands_only_when_lapsed_or_released(
        db: Database, second: Database) -> None:
    first = Lease(db, holder="r1", ttl_s=TTL_S, renew_s=RENEW_S)
    other = Lease(second, holder="r2", ttl_s=TTL_S, renew_s=RENEW_S)
    assert first.try_acquire()
    assert first.renew() and not other.try_acquire()
    first.release()  # a clean stop: the next replica takes it at once, with a new epoch
    assert not first.is_leader()
    assert other.try_acquire() and other.epoch == 2
    with pytest.raises(LeaseLost, match="does not hold"):
        with first.fenced():
            pass


def test_a_second_instruction_under_one_seq_is_refused(db: Database) -> None:
    registry = Registry(db)
    _enrol(registry, "cam-1")
    seq = registry.issue_seq(device_id="cam-1", sha256="a" * 64, deployment_id="dep-1")
    assert registry.record_instruction(device_id="cam-1", seq=seq, envelope=b'{"a": 1}')
    with pytest.raises(ConflictError, match="another signed instruction under seq 1"):
        registry.record_instruction(device_id="cam-1", seq=seq, envelope=b'{"b": 2}')
    assert registry.record_instruction(device_id="cam-1", seq=seq, envelope=b'{"a": 1}')
    assert registry.get_device(device_id="cam-1")["desired_envelope"] == '{"a": 1}'
    # an instruction overtaken by a later seq (another replica's) is logged, not made current
    overtaken = registry.issue_seq(device_id="cam-1", sha256="b" * 64, deployment_id="dep-2")
    latest = registry.issue_seq(device_id="cam-1", sha256="c" * 64, deployment_id="dep-3")
    assert registry.record_instruction(device_id="cam-1", seq=latest, envelope=b'{"c": 3}')
    assert not registry.record_instruction(device_id="cam-1", seq=overtaken,
                                           envelope=b'{"b": 2}')
    assert registry.get_device(device_id="cam-1")["desired_envelope"] == '{"c": 3}'


def test_retention_forgets_old_instructions_but_each_device_latest(db: Database) -> None:
    registry = Registry(db)
    _enrol(registry, "cam-1")
    for n in range(1, 4):
        seq = registry.issue_seq(device_id="cam-1", sha256=f"{n}" * 64, deployment_id=f"d{n}")
        assert registry.record_instruction(device_id="cam-1", seq=seq, envelope=b'{"n": %d}' % n)
    db.run("INSERT INTO instruction_log (device_id, seq, envelope_sha256, issued_at) "
           "VALUES ('gone', 1, 'x', 0.0)")  # a device deleted since
    assert registry.prune_instruction_log(older_than=1.0) == 1  # only the orphan is older
    assert registry.prune_instruction_log(older_than=time.time() + 60) == 2
    left = db.tuples("SELECT device_id, seq FROM instruction_log ORDER BY device_id, seq")
    assert [tuple(r) for r in left] == [("cam-1", 3)]
    # the latest seq still refuses a second, different instruction; a forgotten older one
    # can be logged again but is never made current
    with pytest.raises(ConflictError, match="another signed instruction under seq 3"):
        registry.record_instruction(device_id="cam-1", seq=3, envelope=b'{"other": 1}')
    assert not registry.record_instruction(device_id="cam-1", seq=1, envelope=b'{"old": 1}')
    assert registry.get_device(device_id="cam-1")["desired_envelope"] == '{"n": 3}'
