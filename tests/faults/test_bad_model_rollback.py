"""Bad models with real processes: a model that crashes the agent natively while loading
(a real SIGSEGV, ``EDGEFLEET_TEST_CRASH_ON_LOAD=...:segv``) is rolled back across restarts
by a supervisor loop that restarts the agent like systemd ``Restart=always``; models that
fail the health gate (golden vectors that do not reproduce on the delegate, a smoke
inference over the manifest's latency budget) are rolled back without a restart. Each
time the previous model keeps serving and the server sees ``rolled_back``."""

from __future__ import annotations

import html
import re
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from device_agent.slots import Slots
from device_agent.state_store import StateStore
from model_bundles.builder import build_bundle
from tests.e2e.harness import read_json, wait_for

from .crash_helpers import CrashRig

pytestmark = pytest.mark.e2e

SERVING_V1 = {"served": "wide@1.0.0", "state": "rolled_back"}


def supervise(rig: CrashRig, env: dict[str, str], want: dict[str, str],
              max_runs: int = 5, timeout: float = 90) -> list[int]:
    """Run the agent, restarting it whenever it dies (Restart=always), until ``converged``
    equals ``want``; returns the exit codes of the runs that died."""
    codes: list[int] = []
    agent = rig.start(env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not agent.alive():
            codes.append(agent.proc.returncode)
            agent.stop()
            assert len(codes) < max_runs, f"still dying after {codes}:\n{agent.output()}"
            agent = rig.start(env)
            continue
        try:
            if rig.converged() == want:
                return codes
        except (httpx.HTTPError, OSError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"never reached {want}; exits {codes}\n{agent.output()}")


def history(rig: CrashRig) -> list[dict]:
    r = httpx.get(f"{rig.fleet.url}/api/v1/devices/{rig.device_id}/events",
                  headers=rig.headers, params={"limit": 500}, timeout=5)
    assert r.status_code == 200, r.text
    return sorted(r.json(), key=lambda e: e["seq"])  # the API lists newest first


def assert_console_lists_history(rig: CrashRig) -> None:
    """The console's device page shows every reported transition: state, instruction
    seq, time and detail, one row per event."""
    with httpx.Client(base_url=rig.fleet.url, timeout=10) as console:
        assert console.post("/console/login", data={"token": rig.fleet.token}).status_code < 400
        page = console.get(f"/console/devices/{rig.device_id}").text
    rows = {int(m[1]): m[0] for m in re.finditer(
        r'<tr data-seq="(\d+)" data-kind="install"[^>]*>.*?</tr>', page, re.S)}
    installs = [e for e in history(rig) if e["kind"] == "install"]
    assert installs and sorted(rows) == [e["seq"] for e in installs]
    for e in installs:
        cells = re.findall(r"<td[^>]*>(.*?)</td>", rows[e["seq"]], re.S)
        seq, when, kind, state, instruction, _bundle, detail = cells
        assert (seq, kind, state, instruction) == (str(e["seq"]), "install", e["state"],
                                                   str(e["instruction_seq"]))
        assert when and html.unescape(detail) == (e.get("detail") or "")


def publish(rig: CrashRig, model: Path, name: str, **kw: object) -> None:
    out = rig.root / f"{name}.efb"
    build_bundle([model], name=name, version="1.0.0", key_path=rig.root / "keys" / "publisher.key",
                 out=out, dims={"batch": 2}, **kw)
    rig.fleet.cli("model-bundle", "publish", str(out))


def deploy(rig: CrashRig, bundle: str) -> None:
    r = httpx.post(f"{rig.fleet.url}/api/v1/deployments", headers=rig.headers,
                   json={"bundle": bundle, "device_id": rig.device_id}, timeout=30)
    assert r.status_code == 201, r.text


def noisy_model(path: Path) -> Path:
    """scores = features + uniform noise: its golden outputs never reproduce."""
    graph = helper.make_graph(
        [helper.make_node("RandomUniformLike", ["features"], ["noise"]),
         helper.make_node("Add", ["features", "noise"], ["scores"])], "noisy",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def rig(tmp_path: Path) -> CrashRig:
    r = CrashRig(tmp_path)
    r.deploy("1.0.0")
    assert r.restart_until_converged() == 1
    r.agent.stop(signal.SIGTERM)
    yield r
    r.stop()


def test_model_that_segfaults_the_agent_on_load_is_rolled_back_across_restarts(
        rig: CrashRig) -> None:
    rig.deploy("2.0.0")
    exits = supervise(rig, {"EDGEFLEET_TEST_CRASH_ON_LOAD": "wide@2.0.0:segv"}, SERVING_V1)

    assert exits == [-signal.SIGSEGV, -signal.SIGSEGV]  # trial retried once, then given up
    j = StateStore(rig.dir).load_journal()
    assert (j.state.value, j.version) == ("rolled_back", "2.0.0")
    assert j.error == "crash loop: wide@2.0.0 killed the agent 2 times while loading"
    assert rig.check_disk() == "wide@1.0.0"  # current.json back on v1, files as signed
    assert not (rig.dir / "state" / "loading.json").exists()  # no crash left to count
    api = read_json(rig.dir / "state" / "api.json")
    r = httpx.post(f"http://127.0.0.1:{api['port']}/v1/predict", timeout=5,
                   json={"inputs": {"features": np.ones((1, 16)).tolist()}})
    assert r.status_code == 200 and r.json()["bundle"] == "wide@1.0.0"
    states = [e["state"] for e in history(rig) if e["kind"] == "install"
              and e.get("sha256") == j.sha256]
    # every transition is in the device's history; the retried trial resumed in place
    assert states == ["offered", "downloading", "verified", "staged", "trial", "rolled_back"]
    assert_console_lists_history(rig)


def test_models_failing_the_health_gate_are_rolled_back_with_old_model_serving(
        rig: CrashRig) -> None:
    publish(rig, noisy_model(rig.root / "noisy.onnx"), "noisy")
    publish(rig, rig.root / "wide.onnx", "slow", latency_budget_ms=1e-6)
    agent = rig.start()

    for bundle, why in (("noisy@1.0.0", "golden"), ("slow@1.0.0", "over the budget")):
        deploy(rig, bundle)
        name = bundle.split("@")[0]
        wait_for(lambda n=name: StateStore(rig.dir).load_journal().name == n
                 and rig.converged() == SERVING_V1, 60, f"{bundle} rolled back",
                 (rig.fleet.server, agent))
        j = StateStore(rig.dir).load_journal()
        assert why in (j.error or ""), j.error
        assert rig.check_disk() == "wide@1.0.0"
        assert Slots(rig.dir).current().name == "wide"
        assert agent.alive()  # a gate failure needs no restart
        failed = [e for e in history(rig) if e.get("state") == "rolled_back"
                  and e.get("sha256") == j.sha256]
        assert failed and why in failed[-1]["detail"]
