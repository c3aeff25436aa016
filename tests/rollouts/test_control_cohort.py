"""A control group kept on the current bundle during canary stages, and gates that compare
the canary with it (two-sample confidence sequences): pure checks by seeded simulation, then
20 simulated devices against a real server (embedded broker, real SQLite)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from device_agent.simulator import Behaviour, SimFleet
from fleet_server.api_client import FleetClient
from fleet_server.config import ServerSettings
from fleet_server.errors import InvalidInputError
from fleet_server.rollouts.gate_sim import difference_gate, report_counts
from fleet_server.rollouts.plan import Plan
from fleet_server.rollouts.policy import cohort_order, control_devices
from fleet_server.serve import start_server

from .sim_helpers import publish, wait_for

RUNS, REPORT, ALPHA, BETA = 1000, 500, 0.05, 0.05
GATE = {"error_rate_vs_control": {"halt_above": 0.01, "promote_below": 0.005}}


def _bound(rate: float) -> float:
    return rate + 3 * math.sqrt(rate * (1 - rate) / RUNS)


def _plan(control: float = 30, gate: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"control_percent": control, "stages": [
        {"name": "canary 50%", "kind": "canary", "percent": 50, "deadline_s": 60,
         "gates": {"min_devices": 3, "min_samples": 0, "min_agreement": None,
                   "max_latency_ratio": None, "max_error_rate": None,
                   "sequential": gate or {"error_rate_vs_control": {
                       "halt_above": 0.05, "promote_below": 0.03}}}},
        {"name": "100%", "kind": "canary", "percent": 100, "deadline_s": 60,
         "gates": {"min_devices": 1, "min_samples": 0, "min_agreement": None,
                   "max_latency_ratio": None, "max_error_rate": None}}]}


def test_control_assignment_is_deterministic_per_device_and_near_the_stated_share() -> None:
    ids = [f"dev-{i}" for i in range(10_000)]
    control = control_devices(ids, "ro-7", 10)
    assert control == control_devices(reversed(ids), "ro-7", 10)  # order does not matter
    assert control_devices(ids[:100], "ro-7", 10) == {d for d in control if d in ids[:100]}
    share = len(control) / len(ids)
    assert abs(share - 0.10) <= 3 * math.sqrt(0.1 * 0.9 / len(ids))
    assert control != control_devices(ids, "ro-8", 10)  # a new rollout draws anew
    assert control_devices(ids, "ro-7", 0) == set()
    # independent of the cohort order: the first 5% wave holds about the same share
    first_wave = cohort_order(ids, "ro-7")[:500]
    in_wave = sum(d in control for d in first_wave) / 500
    assert abs(in_wave - 0.10) <= 3 * math.sqrt(0.1 * 0.9 / 500)


@pytest.mark.parametrize(("plan", "message"), [
    ({**_plan(), "control_percent": 60}, r"control_percent must be within \[0, 50\]"),
    (_plan(control=0), "error_rate_vs_control needs a control group"),
    ({**_plan(), "stages": _plan()["stages"][:1]}, "needs a control group"),
    (_plan(gate={"error_rate_vs_control": {"halt_above": 2, "promote_below": 0}}),
     r"within \(-1, 1\)"),
])
def test_bad_control_settings_are_refused(plan: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        Plan.from_dict(plan)


def test_control_plan_round_trips() -> None:
    plan = Plan.from_dict(_plan())
    assert plan.control_percent == 30 and Plan.from_dict(plan.to_dict()) == plan


def _gate(canary: float, control: float, seed: int) -> Any:
    a = report_counts(canary, rollouts=RUNS, reports=200, report_samples=REPORT, seed=seed)
    b = report_counts(control, rollouts=RUNS, reports=200, report_samples=REPORT,
                      seed=seed + 1)
    return difference_gate(a, b, report_samples=REPORT, alpha=ALPHA, beta=BETA,
                           prior_mean=0.02, halt=GATE["error_rate_vs_control"]["halt_above"],
                           promote=GATE["error_rate_vs_control"]["promote_below"])


def test_canary_worse_than_control_by_the_halt_line_is_promoted_at_most_alpha() -> None:
    assert _gate(0.02, 0.01, seed=61).pass_rate <= _bound(ALPHA)


def test_canary_as_good_as_control_is_halted_at_most_beta_and_passes() -> None:
    out = _gate(0.01, 0.01, seed=71)
    assert out.halt_rate <= _bound(BETA)
    assert out.pass_rate >= 1 - _bound(BETA)


def test_canary_clearly_worse_than_control_is_halted() -> None:
    out = _gate(0.05, 0.01, seed=81)
    assert out.halt_rate >= 1 - _bound(ALPHA)


def test_control_group_stays_on_v1_while_a_failing_canary_is_halted_against_it(
        tmp_path: Path, sample_onnx: Path) -> None:
    settings = ServerSettings(data_dir=tmp_path / "fleet", port=0, mqtt_port=0,
                              rollout_tick_s=0.3, insecure=True)
    with start_server(settings) as server, \
            FleetClient(server.http_url, server.admin_token) as client:
        publish(client, tmp_path, sample_onnx, ["1.0.0", "2.0.0", "3.0.0"])
        fleet = SimFleet(server=server.http_url, admin_token=server.admin_token, count=20,
                         group="sim", behaviours={"sample@2.0.0": Behaviour(error_rate=0.3)},
                         report_interval_s=0.5, inferences_per_report=100).start()
        try:
            fleet.wait_connected()
            client.deploy("sample@1.0.0", group="sim")
            wait_for(lambda: all(d["active_bundle"] == "sample@1.0.0"
                                 for d in client.list_devices("sim")), 60, "v1 everywhere")
            sims = {d.device_id: d for d in fleet.devices}

            # a candidate failing 30% of inferences: halted against the control's ~0%
            rid = client.create_rollout("sample@2.0.0", group="sim", plan=_plan())["id"]
            halted = wait_for(lambda: (r := client.get_rollout(rid))["state"] in (
                "halted", "completed") and r, 45, "the failing canary to be decided")
            assert halted["state"] == "halted", halted["last_evaluation"]
            control = {d["device_id"] for d in halted["devices"] if d["role"] == "control"}
            assert control == control_devices(sims, rid, 30) and control
            assert halted["decisions"][0]["data"]["control"] == sorted(control)
            assert all(d["instruction_seq"] == 0 for d in halted["devices"]
                       if d["role"] == "control")
            gate = next(g for g in halted["decisions"][1]["data"]["gates"]
                        if g["name"] == "error_rate_vs_control")
            assert gate["decision"] == "halt" and gate["lower"] > 0.05
            assert halted["decisions"][1]["data"]["metrics"]["control_reporting"] > 0
            # the control devices were never instructed: v1 all along
            assert all(sims[d].active and sims[d].active.version == "1.0.0" for d in control)

            # a good candidate passes the canary stage against the control; the control
            # devices install it only in the last stage
            rid = client.create_rollout("sample@3.0.0", group="sim", plan=_plan())["id"]
            done = wait_for(lambda: (r := client.get_rollout(rid))["state"] in (
                "halted", "completed") and r, 60, "the good rollout to finish")
            assert done["state"] == "completed", done["last_evaluation"]
            gate = next(g for g in done["decisions"][1]["data"]["gates"]
                        if g["name"] == "error_rate_vs_control")
            assert gate["decision"] == "pass" and gate["upper"] < 0.03
            wait_for(lambda: fleet.active_refs()["sample@3.0.0"] == 20, 30, "v3 everywhere")
        finally:
            fleet.stop()
