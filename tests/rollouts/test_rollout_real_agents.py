"""Shadow rollouts with real processes: ``fleet-server serve`` and three ``device-agent run``
agents serving the sample model on their local HTTP API.

A candidate that disagrees with the active model runs in shadow on every device, the
callers keep getting the active model's answers, the agreement gate fails, the rollout halts
with the measured agreement recorded and the devices stop shadowing and keep v1. A good
candidate (v1's weights under a new version) then passes shadow and reaches 100%."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from device_agent.state_store import StateStore
from fleet_server.api_client import FleetClient
from model_bundles.samples import write_sample_model
from tests.e2e.harness import Fleet, run_cli, wait_for

pytestmark = pytest.mark.e2e

GROUP = "shadow-lab"
DEVICES = ("lab-a", "lab-b", "lab-c")
MIN_SAMPLES = 24


def _plan() -> dict[str, Any]:
    """Shadow on 100% of the group, then install on 100%. Latency gates are off: on a
    shared CI box the candidate worker (niced, one thread) is not a fair latency sample."""
    return {"rollback_on_halt": True, "stages": [
        {"name": "shadow 100%", "kind": "shadow", "percent": 100, "deadline_s": 45,
         "shadow_sample_rate": 1.0,
         "gates": {"min_devices": len(DEVICES), "min_samples": MIN_SAMPLES,
                   "min_agreement": 0.9, "max_latency_ratio": None}},
        {"name": "100%", "kind": "canary", "percent": 100, "deadline_s": 45,
         "gates": {"min_devices": len(DEVICES), "min_samples": 3, "min_agreement": None,
                   "max_latency_ratio": None}},
    ]}


def _build(fleet: Fleet, model: Path, golden: Path, version: str) -> Path:
    keys = fleet.root / "keys"
    if not (keys / "publisher.key").exists():
        run_cli("model-bundle", "keygen", "--out", str(keys))
        fleet.cli("fleet-server", "publishers", "add", str(keys / "publisher.pub"))
    out = fleet.root / f"sample-{version}.efb"
    run_cli("model-bundle", "build", str(model), "--name", "sample", "--version", version,
            "--task", "classifier", "--golden", str(golden),
            "--key", str(keys / "publisher.key"), "--out", str(out))
    fleet.cli("model-bundle", "publish", str(out))
    return out


class Callers:
    """Apps on the devices: predict on each agent's local API and check every answer
    against the model the device must be serving."""

    def __init__(self, ports: dict[str, int], rng: np.random.Generator) -> None:
        self.urls = {d: f"http://127.0.0.1:{p}/v1/predict" for d, p in ports.items()}
        self.rng = rng
        self.http = httpx.Client(timeout=10)
        self.calls = 0

    def round(self, expect_bundle: str, expect: ort.InferenceSession) -> None:
        for device, url in self.urls.items():
            x = self.rng.standard_normal((4, 16)).astype(np.float32)
            resp = self.http.post(url, json={"inputs": {"features": x.tolist()}})
            assert resp.status_code == 200, (device, resp.text)
            body = resp.json()
            assert body["bundle"] == expect_bundle, (device, body["bundle"])
            scores, label = expect.run(["scores", "label"], {"features": x})
            assert body["outputs"]["label"] == label.tolist(), device
            np.testing.assert_allclose(np.asarray(body["outputs"]["scores"]), scores,
                                       rtol=1e-5, atol=1e-6)
            self.calls += 1


def _finished(client: FleetClient, rid: str) -> dict[str, Any] | None:
    r = client.get_rollout(rid)
    return r if r["state"] in ("completed", "halted", "aborted") else None


def test_real_agents_shadow_a_disagreeing_candidate_halt_then_a_good_one_completes(
        tmp_path: Path) -> None:
    v1_model = write_sample_model(tmp_path / "v1.onnx", seed=0)
    v2_model = write_sample_model(tmp_path / "v2.onnx", seed=1)
    golden = tmp_path / "golden.npz"
    rng = np.random.default_rng(4)
    np.savez(golden, features=rng.standard_normal((64, 16)).astype(np.float32))
    v1 = ort.InferenceSession(str(v1_model), providers=["CPUExecutionProvider"])
    v2 = ort.InferenceSession(str(v2_model), providers=["CPUExecutionProvider"])
    probe = rng.standard_normal((256, 16)).astype(np.float32)
    differ = np.mean(v1.run(["label"], {"features": probe})[0]
                     != v2.run(["label"], {"features": probe})[0])
    assert differ > 0.3, f"v2 should disagree with v1 on many inputs, does on {differ:.0%}"

    fleet = Fleet(tmp_path, serve_args=("--rollout-tick", "0.5"))
    client = FleetClient(fleet.url, fleet.token)
    try:
        for version, model in (("1.0.0", v1_model), ("2.0.0", v2_model), ("3.0.0", v1_model)):
            _build(fleet, model, golden, version)
        ports: dict[str, int] = {}
        agent_dirs: dict[str, Path] = {}
        for device in DEVICES:
            _, agent_dirs[device], api = fleet.start_agent(device, group=GROUP)
            ports[device] = int(api["port"])
        fleet.cli("fleet-server", "deploy", "sample@1.0.0", "--group", GROUP)
        for device in DEVICES:
            fleet.wait_active(device, "sample@1.0.0")
        callers = Callers(ports, rng)
        callers.round("sample@1.0.0", v1)

        plan_file = tmp_path / "plan.json"
        plan_file.write_text(json.dumps(_plan()))

        # -- v2 disagrees: shadow on every device, callers still get v1, the gate halts it.
        out = fleet.cli("fleet-server", "rollout", "create", "sample@2.0.0", "--group", GROUP,
                        "--plan", str(plan_file), "--json")
        bad = json.loads(out.stdout)["id"]
        wait_for(lambda: all(StateStore(d).record.shadow is not None
                             for d in agent_dirs.values()),
                 30, "every agent staged the shadow candidate", fleet.procs())

        def bad_done() -> dict[str, Any] | None:
            callers.round("sample@1.0.0", v1)  # caller always gets v1's answers
            return _finished(client, bad)

        halted = wait_for(bad_done, 45, "the disagreeing rollout to finish", fleet.procs(),
                          interval=0.05)
        assert halted["state"] == "halted", halted["last_evaluation"]
        assert halted["stage"] == "shadow 100%"
        gates = {g["name"]: g for g in halted["last_evaluation"]["gates"]}
        assert gates["agreement"]["ok"] is False
        assert gates["agreement"]["measured"] < 0.9
        assert abs(gates["agreement"]["measured"] - (1 - differ)) < 0.25
        assert gates["min_samples"]["measured"] >= MIN_SAMPLES
        assert gates["min_devices"]["measured"] == len(DEVICES)
        assert [d["action"] for d in halted["decisions"]] == ["created", "halt", "rollback"]
        halt, rollback = halted["decisions"][1:]
        assert "agreement" in halt["reason"]
        agreement = next(g for g in halt["data"]["gates"] if g["name"] == "agreement")
        assert sorted(rollback["data"]["devices"]) == sorted(DEVICES)
        assert agreement["measured"] == gates["agreement"]["measured"]

        # The shadow reports behind the decision: every device, with drift per input.
        comparison = client.rollout_comparison(bad)
        assert comparison["devices"] == len(DEVICES)
        assert len(comparison["agreement_per_device"]) == len(DEVICES)
        assert max(comparison["agreement_per_device"]) < 0.9
        assert "features" in comparison["drift"]
        with httpx.Client(base_url=fleet.url, timeout=10) as console:
            console.post("/console/login", data={"token": fleet.token})
            page = console.get(f"/console/rollouts/{bad}/compare")
            assert page.status_code == 200 and "chart-drift" in page.text
            assert "features" in page.text  # drift per input, drawn from the agents' reports
            series = console.get(f"/console/devices/{DEVICES[0]}/telemetry")
            assert series.status_code == 200 and "chart-device-latency" in series.text

        # The devices stop shadowing (rollback instruction without shadow) and keep v1.
        wait_for(lambda: not any((d / "shadow").exists() for d in agent_dirs.values()),
                 30, "every agent dropped its shadow candidate", fleet.procs())
        v1_id = client.get_bundle("sample@1.0.0")["id"]
        for device in DEVICES:
            dev = client.get_device(device)
            assert dev["active_bundle"] == "sample@1.0.0"
            assert dev["desired_bundle"] == v1_id  # the rollback instruction names v1
        callers.round("sample@1.0.0", v1)

        # -- v3 (v1's weights, new version): shadow agrees, then it is installed everywhere.
        out = fleet.cli("fleet-server", "rollout", "create", "sample@3.0.0", "--group", GROUP,
                        "--plan", str(plan_file), "--json")
        good = json.loads(out.stdout)["id"]

        def good_done() -> dict[str, Any] | None:
            devices = {d["id"]: d["active_bundle"] for d in client.list_devices(GROUP)}
            for device, url in callers.urls.items():  # predict on whatever is active
                x = rng.standard_normal((4, 16)).astype(np.float32)
                body = callers.http.post(url, json={"inputs": {"features": x.tolist()}}).json()
                label = v1.run(["label"], {"features": x})[0]
                assert body["outputs"]["label"] == label.tolist(), (device, devices)
            return _finished(client, good)

        done = wait_for(good_done, 60, "the good rollout to finish", fleet.procs(),
                        interval=0.05)
        assert done["state"] == "completed", done["last_evaluation"]
        assert [d["action"] for d in done["decisions"]] == ["created", "advance", "complete"]
        shadow_pass = done["decisions"][1]["data"]
        assert next(g for g in shadow_pass["gates"]
                    if g["name"] == "agreement")["measured"] == pytest.approx(1.0)
        for device in DEVICES:
            fleet.wait_active(device, "sample@3.0.0", timeout=30)
        callers.round("sample@3.0.0", v1)
        assert not any((d / "shadow").exists() for d in agent_dirs.values())
    finally:
        client.close()
        fleet.stop()
