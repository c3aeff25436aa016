"""The rollout store on both engines (``db``: SQLite and PostgreSQL): rollouts and their
devices, decisions, the audit log, gate intervals, shadow reports and the registry tables it
reads."""

from __future__ import annotations

import pytest

from fleet_server.db import Database
from fleet_server.errors import NotFoundError
from fleet_server.registry import Registry
from fleet_server.rollout_store import RolloutStore


@pytest.fixture()
def store(db: Database) -> RolloutStore:
    return RolloutStore(db)


def _rollout(store: RolloutStore, now: float = 1.0) -> str:
    rid = store.next_rollout_id()
    store.add_rollout(rollout_id=rid, bundle_id="a" * 64, bundle_ref="m@1.0.0",
                      target_kind="group", target_value="lab", devices=["d1", "d2"],
                      plan={"stages": [{"name": "canary"}]}, created_by="alice", now=now)
    return rid


def test_rollouts_are_numbered_stored_and_filtered_by_state(store: RolloutStore) -> None:
    first, second = _rollout(store, 1.0), _rollout(store, 2.0)
    assert (first, second) == ("ro-1", "ro-2")
    store.update_rollout(rollout_id=first, now=3.0, state="completed",
                         last_evaluation={"outcome": "pass"})
    row = store.get_rollout(rollout_id=first)
    assert (row["state"], row["devices"], row["last_evaluation"], row["updated_at"]) == (
        "completed", ["d1", "d2"], {"outcome": "pass"}, 3.0)
    assert [r["id"] for r in store.list_rollouts()] == ["ro-2", "ro-1"]
    assert [r["id"] for r in store.list_rollouts(states=("running", "paused"))] == ["ro-2"]
    with pytest.raises(NotFoundError):
        store.get_rollout(rollout_id="ro-9")


def test_a_reassigned_device_keeps_one_row_and_exclusion_marks_only_the_named(
        store: RolloutStore) -> None:
    rid = _rollout(store)
    for role, seq in (("shadow", 1), ("canary", 2)):
        store.set_rollout_device(rollout_id=rid, device_id="d1", role=role, stage_index=seq - 1,
                                 instruction_seq=seq, deployment_id=f"dep-{seq}",
                                 previous_bundle_id=None, now=float(seq))
    store.set_rollout_device(rollout_id=rid, device_id="d2", role="canary", stage_index=1,
                             instruction_seq=1, deployment_id="dep-3",
                             previous_bundle_id="b" * 64, now=3.0)
    store.set_excluded(rollout_id=rid, device_ids=["d2"])
    devices = store.rollout_devices(rollout_id=rid)
    assert sorted(devices) == ["d1", "d2"]
    assert (devices["d1"]["role"], devices["d1"]["instruction_seq"],
            devices["d1"]["excluded"]) == ("canary", 2, False)
    assert devices["d2"]["excluded"] is True and devices["d2"]["previous_bundle_id"] == "b" * 64


def test_decisions_and_audit_rows_come_back_in_order(store: RolloutStore) -> None:
    rid = _rollout(store)
    for i, action in enumerate(("advance", "halt")):
        store.add_decision(rollout_id=rid, ts=float(i), stage_index=i, stage="canary",
                           action=action, actor="driver", reason=f"r{i}", data={"i": i})
        store.add_audit(actor="driver", action=f"rollout.{action}", subject=rid,
                        detail={"i": i}, ts=float(i))
    assert [(d["id"], d["action"], d["data"]) for d in store.list_decisions(rollout_id=rid)] == [
        (1, "advance", {"i": 0}), (2, "halt", {"i": 1})]
    audit = store.list_audit(subject=rid)
    assert [(a["action"], a["detail"]) for a in audit] == [
        ("rollout.halt", {"i": 1}), ("rollout.advance", {"i": 0})]
    assert store.list_audit(subject="ro-404") == []


def test_gate_intervals_are_stored_only_when_the_sample_count_moves(store: RolloutStore) -> None:
    gate = {"name": "agreement", "n": 24.0, "measured": 0.95, "lower": 0.9, "upper": 0.99,
            "threshold": 0.97, "halt": 0.9, "decision": "continue"}
    assert store.add_gate_intervals(rollout_id="ro-1", stage_index=0, ts=1.0, gates=[gate]) == 1
    assert store.add_gate_intervals(rollout_id="ro-1", stage_index=0, ts=2.0, gates=[gate]) == 0
    assert store.add_gate_intervals(rollout_id="ro-1", stage_index=0, ts=3.0,
                                    gates=[{**gate, "n": 30.0}]) == 1
    history = store.gate_history(rollout_id="ro-1")
    assert [(h["ts"], h["n"], h["lower"], h["upper"]) for h in history] == [
        (1.0, 24.0, 0.9, 0.99), (3.0, 30.0, 0.9, 0.99)]


def test_a_resent_shadow_report_is_stored_once(store: RolloutStore) -> None:
    sha = "c" * 64
    assert store.add_shadow_report(device_id="d1", seq=7, ts=5.0, candidate_sha256=sha,
                                   data={"agree": 3})
    assert not store.add_shadow_report(device_id="d1", seq=7, ts=5.0, candidate_sha256=sha,
                                       data={"agree": 99})
    rows = store.shadow_reports(candidate_sha256=sha, device_ids=["d1", "d2"], since=0.0)
    assert [(r["device_id"], r["seq"], r["data"]) for r in rows] == [("d1", 7, {"agree": 3})]
    assert store.shadow_reports(candidate_sha256=sha, device_ids=[], since=0.0) == []


def test_the_store_reads_the_registrys_telemetry_and_target_states(
        store: RolloutStore, db: Database) -> None:
    registry = Registry(db)
    registry.add_device(device_id="d1", group="lab", public_key="", mqtt_secret_hash="h")
    for seq in (1, 2, 3):
        registry.add_telemetry(device_id="d1", seq=seq, ts=float(seq * 10), data={"n": seq})
    registry.add_deployment_target(deployment_id="dep-1", device_id="d1", instruction_seq=4)
    assert [r["data"] for r in store.telemetry(device_ids=["d1"], since=15.0)] == [
        {"n": 2}, {"n": 3}]
    assert [r["seq"] for r in store.device_telemetry_series(device_id="d1", limit=2)] == [2, 3]
    assert store.target_states(deployment_ids=["dep-1"]) == [
        {"deployment_id": "dep-1", "device_id": "d1", "instruction_seq": 4, "state": "issued",
         "error": None}]
