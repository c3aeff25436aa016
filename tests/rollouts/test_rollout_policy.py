"""The pure gate policy and plan validation (no I/O)."""

from __future__ import annotations

import pytest

from fleet_server.errors import InvalidInputError
from fleet_server.rollouts.plan import Gates, Plan, Stage, default_plan
from fleet_server.rollouts.policy import StageMetrics, cohort_order, cohort_size, evaluate

SHADOW = Stage("shadow", "shadow", 5, Gates(min_devices=5, min_samples=200,
                                             min_agreement=0.95), deadline_s=60)
CANARY = Stage("canary", "canary", 25, Gates(min_devices=5, min_samples=100,
                                             min_agreement=None, max_error_rate=0.01))


def test_shadow_stage_fails_on_low_agreement_with_the_numbers() -> None:
    m = StageMetrics(cohort=10, reporting=10, excluded=0, samples=500, agreement=0.8,
                     latency_ratio=1.0, error_rate=0.0)
    ev = evaluate(SHADOW, m, elapsed_s=5)
    assert ev.outcome == "fail"
    assert [(g.name, g.measured, g.threshold) for g in ev.failing] == [
        ("agreement", 0.8, 0.95)]
    assert "agreement 0.8 (needs >= 0.95)" in ev.reason


def test_stage_waits_for_minimums_then_fails_at_deadline() -> None:
    m = StageMetrics(cohort=10, reporting=3, excluded=0, samples=50, agreement=0.5)
    assert evaluate(SHADOW, m, elapsed_s=5).outcome == "wait"
    late = evaluate(SHADOW, m, elapsed_s=61)
    assert late.outcome == "fail" and late.reason.startswith("deadline passed")


def test_install_failures_and_fallback_fail_at_once() -> None:
    m = StageMetrics(cohort=10, reporting=1, excluded=0, samples=1, installs_done=8,
                     installs_failed=2)
    ev = evaluate(CANARY, m, 1)
    assert ev.outcome == "fail" and ev.reason.startswith("install_failure_rate 0.2")
    m = StageMetrics(cohort=10, reporting=1, excluded=0, samples=1, fallback_devices=1)
    ev = evaluate(CANARY, m, 1)
    assert ev.outcome == "fail" and ev.reason.startswith("fallback_devices 1")


def test_canary_passes_when_all_gates_met() -> None:
    m = StageMetrics(cohort=50, reporting=50, excluded=0, samples=5000, latency_ratio=1.1,
                     error_rate=0.001, installs_done=50)
    assert evaluate(CANARY, m, 10).outcome == "pass"


def test_cohorts_are_stable_prefixes() -> None:
    ids = [f"d{i}" for i in range(200)]
    order = cohort_order(ids, "ro-1")
    assert order == cohort_order(reversed(ids), "ro-1") and sorted(order) == sorted(ids)
    assert [cohort_size(200, p) for p in (5, 25, 100)] == [10, 50, 200]
    assert cohort_size(3, 5) == 1


def test_plan_round_trips_and_rejects_bad_input() -> None:
    plan = default_plan()
    assert Plan.from_dict(plan.to_dict()) == plan
    with pytest.raises(InvalidInputError, match="must not decrease"):
        Plan.from_dict({"stages": [{"percent": 50}, {"percent": 10}]})
    with pytest.raises(InvalidInputError, match="last stage"):
        Plan.from_dict({"stages": [{"kind": "shadow", "percent": 5}]})
    with pytest.raises(InvalidInputError, match="unknown keys"):
        Plan.from_dict({"stages": [{"percent": 5, "gates": {"min_agreemnt": 1}}]})
