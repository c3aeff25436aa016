"""The rollout pages' chart data (fleet_server.console.rollout_charts): what each uPlot chart
is given, from store rows as the server keeps them. The browser tests check the drawing."""

from __future__ import annotations

import pytest

from fleet_server.console.rollout_charts import (
    MAX_POINTS,
    interval_over_time,
    progress_over_time,
    shadow_over_time,
)

PLAN = {"stages": [{"name": "shadow", "kind": "shadow", "percent": 10},
                   {"name": "canary", "kind": "canary", "percent": 50},
                   {"name": "all", "kind": "canary", "percent": 100}]}


def _report(device: str, ts: float, agreement: float, samples: int, active: float = 2.0,
            candidate: float = 3.0, psi: float = 0.1) -> dict:
    return {"device_id": device, "seq": int(ts), "ts": ts, "data": {
        "top1_agreement": agreement, "samples": samples, "score_delta_mean": 0.5, "mae": 0.25,
        "latency_ms_active": {"p95": active}, "latency_ms_candidate": {"p95": candidate},
        "drift": {"features": {"psi": psi, "drifted": psi > 0.2}}}}


def _values(spec: dict, label: str) -> list:
    return next(s["values"] for s in spec["series"] if s["label"] == label)


def test_reports_of_one_second_make_one_point_weighted_by_samples_with_the_lowest_device() -> None:
    rows = [_report("a", 1000.1, 1.0, 300), _report("b", 1000.7, 0.6, 100, candidate=5.0),
            _report("a", 1003.2, 0.9, 50, psi=0.3)]
    step, specs = shadow_over_time(rows, {"min_agreement": 0.95, "max_latency_ratio": 1.5})
    assert step == 1
    agreement = specs["agreement"]
    assert agreement["x"] == [1000, 1003]
    assert _values(agreement, "all shadow devices") == pytest.approx([0.9, 0.9])
    assert _values(agreement, "lowest device") == pytest.approx([0.6, 0.9])
    assert agreement["lines"] == [{"label": "min_agreement gate", "value": 0.95}]
    assert _values(specs["ratio"], "p95 ratio") == pytest.approx([4.0 / 2.0, 1.5])
    assert specs["ratio"]["lines"][0]["value"] == 1.5
    assert _values(specs["drift"], "features") == pytest.approx([0.1, 0.3])
    assert specs["drift"]["threshold"] == 0.2


def test_a_day_of_reports_is_bucketed_into_at_most_max_points() -> None:
    rows = [_report("a", 10.0 * i, 0.97, 10) for i in range(8640)]  # every 10 s for 24 h
    step, specs = shadow_over_time(rows, {})
    assert 0 < len(specs["agreement"]["x"]) <= MAX_POINTS
    assert len(specs["agreement"]["x"]) == len({int(r["ts"] // step) for r in rows})
    assert specs["agreement"]["lines"] == [] and specs["ratio"]["lines"] == []


def test_a_rollout_without_shadow_reports_has_empty_charts() -> None:
    _, specs = shadow_over_time([], {"min_agreement": 0.95})
    assert all(spec["x"] == [] for spec in specs.values())
    assert _values(specs["agreement"], "all shadow devices") == []


def test_progress_steps_to_each_stage_share_and_to_none_on_rollback() -> None:
    decisions = [
        {"ts": 1.0, "stage_index": 0, "action": "created", "reason": "to group g"},
        {"ts": 2.0, "stage_index": 0, "action": "advance", "reason": "shadow -> canary"},
        {"ts": 3.0, "stage_index": 1, "action": "halt", "reason": "error rate"},
        {"ts": 3.0, "stage_index": 1, "action": "rollback", "reason": "2 devices back"},
    ]
    spec = progress_over_time(decisions, PLAN)
    assert spec["x"] == [1.0, 2.0, 3.0, 3.0]
    assert spec["series"][0]["values"] == [10.0, 50.0, 50.0, 0.0]
    assert spec["series"][0]["stepped"] is True
    assert spec["notes"][1] == "advance: shadow -> canary"
    done = progress_over_time([*decisions[:2], {"ts": 4.0, "stage_index": 2,
                                                "action": "complete", "reason": "passed"}], PLAN)
    assert done["series"][0]["values"][-1] == 100.0


def _interval(ts: float, n: float, lower: float, upper: float, decision: str) -> dict:
    return {"ts": ts, "n": n, "estimate": (lower + upper) / 2, "lower": lower, "upper": upper,
            "halt": 0.85, "promote": 0.95, "decision": decision}


def test_the_interval_chart_marks_the_first_decision_and_zooms_onto_its_lines() -> None:
    rows = [_interval(10.0, 100, 0.5, 1.0, "continue"),
            _interval(20.0, 400, 0.78, 0.86, "continue"),
            _interval(30.0, 900, 0.76, 0.84, "halt"), _interval(40.0, 950, 0.76, 0.83, "halt")]
    spec = interval_over_time(rows, gate="agreement")
    assert spec["x"] == [10.0, 20.0, 30.0, 40.0]
    assert spec["markers"] == [{"x": 30.0, "label": "decided halt"}]
    assert spec["lines"] == [{"label": "halt", "value": 0.85}, {"label": "promote", "value": 0.95}]
    assert spec["bands"] == [[0, 1]] and spec["unit"] == "rate"
    low, high = spec["yrange"]
    assert 0.0 <= low < 0.76 and 0.95 < high <= 1.0
    assert spec["notes"][2] == "after 900 samples: halt"
    undecided = interval_over_time(rows[:2], gate="latency_ratio_p95")
    assert undecided["markers"] == [] and undecided["unit"] == "ratio"
