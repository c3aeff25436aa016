"""Storage shared by replicas, on both engines (``db``: SQLite and PostgreSQL): each replica
has its own pool on the same database. A report handed to both (a redelivery after a
replica died, a device re-sending its outbox) is stored once, by device and seq; an install
state reported out of order never takes a finished install back to an earlier step."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fleet_server.db import Database
from fleet_server.registry import Registry
from fleet_server.rollout_store import RolloutStore


@pytest.fixture()
def replicas(db: Database) -> Iterator[tuple[Registry, Registry]]:
    other = Database(db.url)
    yield Registry(db), Registry(other)
    other.close()


def test_a_report_stored_by_two_replicas_is_kept_once(
        db: Database, replicas: tuple[Registry, Registry]) -> None:
    r1, r2 = replicas
    r1.add_device(device_id="cam-1", group="lab", public_key="pk", mqtt_secret_hash="h")
    assert r1.add_telemetry(device_id="cam-1", seq=7, ts=1.0, data={"n": 1})
    assert not r2.add_telemetry(device_id="cam-1", seq=7, ts=1.0, data={"n": 1})
    assert r2.add_event(device_id="cam-1", seq=8, ts=1.0, kind="install", data={})
    assert not r1.add_event(device_id="cam-1", seq=8, ts=1.0, kind="install", data={})
    other = Database(db.url)
    try:
        assert RolloutStore(db).add_shadow_report(device_id="cam-1", seq=9, ts=1.0,
                                                  candidate_sha256="c" * 64, data={})
        assert not RolloutStore(other).add_shadow_report(device_id="cam-1", seq=9, ts=1.0,
                                                         candidate_sha256="c" * 64, data={})
    finally:
        other.close()
    assert (r1.count_reports(table="telemetry", device_id="cam-1"),
            r1.count_reports(table="events", device_id="cam-1")) == (1, 1)
    assert db.count("shadow_reports") == 1


def test_an_install_step_stored_after_the_commit_does_not_undo_it(
        replicas: tuple[Registry, Registry]) -> None:
    r1, r2 = replicas
    r1.add_device(device_id="cam-1", group="lab", public_key="pk", mqtt_secret_hash="h")
    r1.add_deployment(deployment_id="dep-1", bundle_ref="m@1", bundle_id="a" * 64,
                      target_kind="device", target_value="cam-1", created_by="t")
    r1.add_deployment_target(deployment_id="dep-1", device_id="cam-1", instruction_seq=1)
    assert r1.update_target_state(device_id="cam-1", instruction_seq=1, state="committed",
                                  error=None)
    # the device's earlier "trial" event, stored by the other replica afterwards
    assert r2.update_target_state(device_id="cam-1", instruction_seq=1, state="trial",
                                  error=None)
    target = r1.get_deployment(deployment_id="dep-1")["targets"][0]
    assert target["state"] == "committed"
    # a finished install may still become another finished state (a later rollback)
    r2.update_target_state(device_id="cam-1", instruction_seq=1, state="rolled_back",
                           error="health gate")
    target = r1.get_deployment(deployment_id="dep-1")["targets"][0]
    assert (target["state"], target["error"]) == ("rolled_back", "health gate")
