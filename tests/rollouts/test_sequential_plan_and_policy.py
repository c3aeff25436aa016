"""Sequential gates in the plan, the pure policy and the decision store (real SQLite)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from fleet_server import schema
from fleet_server.db import Database, DatabaseError, sqlite_url
from fleet_server.errors import InvalidInputError
from fleet_server.rollout_store import RolloutStore
from fleet_server.rollouts.plan import Plan, Stage, default_plan
from fleet_server.rollouts.policy import StageMetrics, evaluate

SEQ = {"alpha": 0.05, "beta": 0.05,
       "agreement": {"halt_below": 0.97, "promote_above": 0.99},
       "error_rate": {"halt_above": 0.02, "promote_below": 0.01}}


def _plan(seq: Any, kind: str = "shadow") -> dict[str, Any]:
    return {"stages": [
        {"name": "s", "kind": kind, "percent": 10, "deadline_s": 60,
         "gates": {"min_devices": 1, "min_samples": 0, "sequential": seq}},
        {"name": "all", "kind": "canary", "percent": 100}]}


def _shadow_stage() -> Stage:
    return Plan.from_dict(_plan(SEQ)).stages[0]


def _metrics(agree: float, errors: float, n: int) -> StageMetrics:
    return StageMetrics(cohort=3, reporting=3, excluded=0, samples=n, agreement=agree / n,
                        error_rate=errors / (n + errors),
                        sequential={"agreement": [agree, n], "error_rate": [errors, n + errors]})


def test_sequential_plan_round_trips_and_old_plans_stay_valid_unchanged() -> None:
    plan = Plan.from_dict(_plan(SEQ))
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    seq = plan.stages[0].gates.sequential
    assert seq is not None and (seq.alpha, seq.beta, seq.prior_strength) == (0.05, 0.05, 100)
    assert [(g.metric, g.halt, g.promote) for g in seq.gates] == [
        ("agreement", 0.97, 0.99), ("error_rate", 0.02, 0.01)]
    # a plan without "sequential" (every stored plan so far) reads and writes as before
    old = default_plan().to_dict()
    assert "sequential" not in json.dumps(old)
    assert Plan.from_dict(old) == default_plan()
    assert Plan.from_dict(old).stages[0].gates.sequential is None


@pytest.mark.parametrize(("seq", "message"), [
    ({"agreement": {"halt_below": 0.99, "promote_above": 0.97}},
     r"promote_above \(0.97\) must be >= halt_below \(0.99\)"),
    ({"error_rate": {"halt_above": 0.01, "promote_below": 0.02}},
     r"promote_below \(0.02\) must be <= halt_above \(0.01\)"),
    ({"agreement": {"min": 0.9}}, r"must be an object with exactly \['halt_below'"),
    ({"agreemnt": {"halt_below": 0.9, "promote_above": 0.95}}, "unknown gate 'agreemnt'"),
    ({"alpha": 0.7, "agreement": {"halt_below": 0.9, "promote_above": 0.95}},
     r"alpha must be within \(0, 0.5\]"),
    ({"alpha": 0.05}, "needs at least one of"),
    ({"agreement": {"halt_below": 1.2, "promote_above": 1.3}}, r"within \(0, 1\)"),
    ({"latency_ratio": {"halt_above": 9, "promote_below": 1.2}}, r"within \(0, 4\)"),
    ("fast", "sequential must be an object"),
])
def test_bad_sequential_settings_are_refused_with_the_reason(seq: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        Plan.from_dict(_plan(seq))


def test_agreement_and_drift_gates_are_refused_on_a_canary_stage() -> None:
    with pytest.raises(InvalidInputError, match="agreement gate needs a stage of kind shadow"):
        Plan.from_dict(_plan({"agreement": {"halt_below": 0.9, "promote_above": 0.95}},
                             kind="canary"))


def test_sequential_gate_halts_as_soon_as_the_interval_is_below_the_halt_line() -> None:
    stage = _shadow_stage()
    early = evaluate(stage, _metrics(agree=23, errors=0, n=24), elapsed_s=1)
    assert early.outcome == "wait" and early.reason.startswith("not enough samples yet")
    gate = next(g for g in early.gates if g.name == "agreement")
    assert gate.decision == "continue" and gate.lower is not None and gate.upper is not None
    assert gate.lower < 23 / 24 < gate.upper
    late = evaluate(stage, _metrics(agree=4800, errors=0, n=5000), elapsed_s=2)
    assert late.outcome == "fail"
    gate = next(g for g in late.gates if g.name == "agreement")
    assert gate.decision == "halt" and gate.upper is not None and gate.upper < 0.97
    assert gate.n == 5000 and gate.halt == 0.97 and gate.threshold == 0.99
    assert "after 5000 samples (entirely below the halt line 0.97)" in late.reason
    recorded = late.to_dict()["gates"]
    assert {"lower", "upper", "n", "decision", "halt"} <= set(recorded[2])
    # the fixed min_agreement gate is not used for a metric judged sequentially
    assert [g.name for g in late.gates].count("agreement") == 1


def test_sequential_gates_pass_only_when_every_interval_clears_its_line() -> None:
    stage = _shadow_stage()
    ev = evaluate(stage, _metrics(agree=20000, errors=0, n=20000), elapsed_s=5)
    assert ev.outcome == "pass", ev.reason
    assert {g.name: g.decision for g in ev.gates if g.decision} == {
        "agreement": "pass", "error_rate": "pass"}
    # agreement clears, the error rate (1%) does not yet: wait, then the deadline halts
    half = _metrics(agree=20000, errors=200, n=20000)
    assert evaluate(stage, half, elapsed_s=5).outcome == "wait"
    late = evaluate(stage, half, elapsed_s=61)
    assert late.outcome == "fail" and late.reason.startswith("deadline passed undecided")


def _old_registry(path: Path) -> None:
    """A registry file written before sequential gates: no rollout_gate_history table."""
    conn = sqlite3.connect(path)
    conn.execute("create table rollouts (id text primary key, bundle_id text, bundle_ref "
                 "text, target_kind text, target_value text, devices text, plan text, state "
                 "text, stage_index integer, stage_started_at float, created_at float, "
                 "created_by text, updated_at float, last_evaluation text)")
    conn.execute("insert into rollouts values ('ro-1', 'sha', 'sample@1', 'group', 'g', "
                 "'[\"d1\"]', ?, 'completed', 3, 1.0, 1.0, 'admin', 2.0, null)",
                 [json.dumps(default_plan().to_dict())])
    conn.commit()
    conn.close()


def test_an_older_registry_is_refused_then_upgraded_gains_the_interval_history_and_keeps_its_rollouts(
        tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    _old_registry(path)
    with pytest.raises(DatabaseError, match="too old: it has no revision"):
        RolloutStore(path)  # never upgraded silently
    db = Database(sqlite_url(path))
    try:
        before, after = schema.upgrade(db)  # `fleet-server db upgrade` adopts the old file
    finally:
        db.close()
    assert (before.current, after.current) == (None, schema.head())
    store = RolloutStore(path)
    try:
        old = store.get_rollout(rollout_id="ro-1")
        assert old["state"] == "completed" and Plan.from_dict(old["plan"]) == default_plan()
        assert store.gate_history(rollout_id="ro-1") == []
        gates = [g.to_dict() for g in evaluate(_shadow_stage(), _metrics(23, 0, 24), 1).gates
                 if g.decision]
        assert store.add_gate_intervals(rollout_id="ro-1", stage_index=0, ts=10.0,
                                        gates=gates) == 2
        # a tick with no new samples adds nothing
        assert store.add_gate_intervals(rollout_id="ro-1", stage_index=0, ts=11.0,
                                        gates=gates) == 0
        history = store.gate_history(rollout_id="ro-1")
        assert [(h["gate"], h["n"], h["decision"]) for h in history] == [
            ("agreement", 24, "continue"), ("error_rate", 24, "continue")]
        assert history[0]["lower"] < history[0]["upper"] and history[0]["halt"] == 0.97
    finally:
        store.close()
