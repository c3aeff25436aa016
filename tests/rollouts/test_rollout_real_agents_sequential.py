"""A sequential agreement gate with real processes: ``fleet-server serve`` on its embedded
broker and three ``device-agent run`` agents. The candidate is v1 with its last layer nudged
so that it agrees with v1 on about 96% of inputs; the plan halts below 98% agreement with
95% confidence. The gate halts it, the decision record holds the interval and its sample
count, and the devices drop the candidate and keep serving v1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from fleet_server.api_client import FleetClient
from fleet_server.rollouts.pace import shadow_pace
from fleet_server.rollouts.plan import Plan
from model_bundles.samples import sample_model, write_sample_model
from tests.e2e.harness import Fleet, wait_for
from tests.rollouts.test_rollout_real_agents import Callers, _build, _finished

pytestmark = pytest.mark.e2e

GROUP = "sequential-lab"
DEVICES = ("seq-a", "seq-b", "seq-c")
HALT_BELOW, PROMOTE_ABOVE = 0.98, 0.995
PLAN: dict[str, Any] = {"rollback_on_halt": True, "stages": [
    {"name": "shadow 100%", "kind": "shadow", "percent": 100, "deadline_s": 80,
     "shadow_sample_rate": 1.0,
     "gates": {"min_devices": len(DEVICES), "min_samples": 0, "max_latency_ratio": None,
               "sequential": {"alpha": 0.05, "beta": 0.05, "agreement": {
                   "halt_below": HALT_BELOW, "promote_above": PROMOTE_ABOVE}}}},
    {"name": "100%", "kind": "canary", "percent": 100, "deadline_s": 45,
     "gates": {"min_devices": len(DEVICES), "min_samples": 3, "min_agreement": None,
               "max_latency_ratio": None}},
]}


def _labels(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["label"], {"features": x})[0])


def _candidate_agreeing(path: Path, target: float, probe: np.ndarray) -> float:
    """v1 with noise added to its output layer, scaled by bisection until its labels agree
    with v1's on ``target`` of the probe inputs; writes it and returns the agreement."""
    base = _labels(sample_model(0), probe)
    noise = np.random.default_rng(9).standard_normal((32, 4)).astype(np.float32)
    lo, hi = 0.0, 1.0
    for _ in range(20):
        scale = (lo + hi) / 2
        model = sample_model(0)
        w2 = next(t for t in model.graph.initializer if t.name == "w2")
        w2.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w2) + scale * noise, "w2"))
        agreement = float(np.mean(_labels(model, probe) == base))
        if abs(agreement - target) < 0.004:
            onnx.save_model(model, str(path))
            return agreement
        lo, hi = (scale, hi) if agreement > target else (lo, scale)
    raise AssertionError(f"no candidate agreeing {target:.0%} (last {agreement:.3f})")


def test_real_agents_sequential_gate_halts_a_96_percent_candidate_and_devices_keep_v1(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    probe = rng.standard_normal((20_000, 16)).astype(np.float32)
    v1_model = write_sample_model(tmp_path / "v1.onnx", seed=0)
    agreement = _candidate_agreeing(tmp_path / "v2.onnx", 0.96, probe)
    golden = tmp_path / "golden.npz"
    np.savez(golden, features=rng.standard_normal((64, 16)).astype(np.float32))
    v1 = ort.InferenceSession(str(v1_model), providers=["CPUExecutionProvider"])

    fleet = Fleet(tmp_path, serve_args=("--rollout-tick", "0.5"))
    client = FleetClient(fleet.url, fleet.token)
    try:
        for version, model in (("1.0.0", v1_model), ("2.0.0", tmp_path / "v2.onnx")):
            _build(fleet, model, golden, version)
        ports: dict[str, int] = {}
        agent_dirs: dict[str, Path] = {}
        for device in DEVICES:
            # the gate needs hundreds of samples: the server asks for a pace above the
            # device's default ceiling (600 a minute), which these lab devices raise
            _, agent_dirs[device], api = fleet.start_agent(
                device, group=GROUP, config={"shadow_samples_per_minute": 6000})
            ports[device] = int(api["port"])
        fleet.cli("fleet-server", "deploy", "sample@1.0.0", "--group", GROUP)
        for device in DEVICES:
            fleet.wait_active(device, "sample@1.0.0")
        callers = Callers(ports, rng)

        plan_file = tmp_path / "plan.json"
        plan_file.write_text(json.dumps(PLAN))
        out = fleet.cli("fleet-server", "rollout", "create", "sample@2.0.0", "--group", GROUP,
                        "--plan", str(plan_file), "--json")
        rid = json.loads(out.stdout)["id"]

        def done() -> dict[str, Any] | None:
            callers.round("sample@1.0.0", v1)  # callers always get v1's answers
            return _finished(client, rid)

        halted = wait_for(done, 75, "the sequential gate to decide", fleet.procs(),
                          interval=0.01)
        assert halted["state"] == "halted", halted["last_evaluation"]
        assert [d["action"] for d in halted["decisions"]] == ["created", "halt", "rollback"]
        halt = halted["decisions"][1]
        gate = next(g for g in halt["data"]["gates"] if g["name"] == "agreement")
        # halted by the interval, not by the deadline: it lies entirely below 98%
        assert gate["decision"] == "halt" and gate["ok"] is False
        assert gate["upper"] < HALT_BELOW and gate["lower"] < gate["measured"] < gate["upper"]
        assert gate["n"] > 0 and gate["n"] == halt["data"]["metrics"]["sequential"][
            "agreement"][1]
        assert abs(gate["measured"] - agreement) < 0.05
        assert (gate["halt"], gate["threshold"]) == (HALT_BELOW, PROMOTE_ABOVE)
        assert "entirely below the halt line 0.98" in halt["reason"]
        assert halted["last_evaluation"]["reason"] == halt["reason"]
        # the pace the stage asked of each device, beside what the agents reported
        asked = shadow_pace(Plan.from_dict(PLAN).stages[0], len(DEVICES))
        assert halt["data"]["metrics"]["pace_asked"] == asked
        assert 0 < halt["data"]["metrics"]["pace_achieved"]
        print(f"candidate agreement on the probe {agreement:.3f}; halted: {halt['reason']}")

        # the devices drop the candidate (rollback without shadow) and keep serving v1
        wait_for(lambda: not any((d / "shadow").exists() for d in agent_dirs.values()),
                 30, "every agent dropped its shadow candidate", fleet.procs())
        v1_id = client.get_bundle("sample@1.0.0")["id"]
        for device in DEVICES:
            dev = client.get_device(device)
            assert dev["active_bundle"] == "sample@1.0.0"
            assert dev["desired_bundle"] == v1_id
        callers.round("sample@1.0.0", v1)
    finally:
        client.close()
        fleet.stop()
