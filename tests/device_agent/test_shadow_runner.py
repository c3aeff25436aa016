"""Shadow mode never changes or delays the served answer: a candidate that differs (a real
ONNX model with other weights) and is slow (its session blocks until released) runs beside
the active model; callers of the local API and of ``Agent.predict``-style offers get the
active model's exact answer before the candidate has finished; overflow and budget
exhaustion drop samples and count them; the window reports the comparison."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from delegates.base import Session
from device_agent.local_api import LocalApi
from device_agent.runtime import ModelRuntime
from device_agent.shadow import Candidate, ShadowConfig, ShadowRunner
from device_agent.telemetry import TelemetryRecorder
from model_bundles.samples import write_sample_model

X = np.random.default_rng(3).standard_normal((4, 16)).astype(np.float32)


class BlockingSession:
    """A real ORT session whose ``run`` signals it started, then waits to be released
    (implements the ``delegates.base.Session`` protocol by delegation)."""

    def __init__(self, inner: Session) -> None:
        self.inner = inner
        self.started = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        self.calls = 0
        for attr in ("delegate", "requested", "fallback", "fallback_reason", "node_counts",
                     "providers", "input_names", "output_names"):
            setattr(self, attr, getattr(inner, attr))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        self.started.set()
        assert self.release.wait(30), "test never released the slow candidate"
        out = self.inner.run(feeds)
        self.finished.set()
        return out

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def active(make_slot: Any, sample_onnx: Path) -> ModelRuntime:
    rt = ModelRuntime.load(make_slot(sample_onnx, "active"), gate=True)
    yield rt
    rt.close()


@pytest.fixture
def slow_candidate(make_slot: Any, tmp_path: Path) -> tuple[ModelRuntime, BlockingSession]:
    model = write_sample_model(tmp_path / "cand.onnx", seed=1)  # other weights: other answers
    rt = ModelRuntime.load(make_slot(model, "cand", version="1.1.0"), gate=True)
    blocking = BlockingSession(rt.session)
    assert isinstance(blocking, Session)
    slow = ModelRuntime(rt.manifest, rt.slot_dir, blocking, rt.variant)
    return slow, blocking


def post(url: str, inputs: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps({"inputs": inputs}).encode()
    req = urllib.request.Request(url + "/v1/predict", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_slow_different_candidate_never_changes_or_delays_the_served_answer(
    active: ModelRuntime, slow_candidate: tuple[ModelRuntime, BlockingSession]
) -> None:
    cand, blocking = slow_candidate
    # a sample pace that lets all 6 calls be sampled (the default spreads samples out)
    runner = ShadowRunner(ShadowConfig(queue_size=2, cpu_budget=1.0, burst_s=60.0,
                                       sample_burst=8)).start()
    runner.set_candidate(Candidate(cand, "c" * 64, sample_rate=1.0))
    expected = active.predict({"features": X}).outputs
    try:
        with LocalApi(lambda: active, TelemetryRecorder(), port=0, shadow=runner) as api:
            first = post(api.url, {"features": X.tolist()})
            assert blocking.started.wait(10)  # the candidate is running this sample...
            second = post(api.url, {"features": X.tolist()})  # ...and callers still get answers
            more = [post(api.url, {"features": X.tolist()}) for _ in range(4)]
            assert not blocking.finished.is_set()  # every answer came before the candidate's
            for got in (first, second, *more):
                assert got["bundle"] == "sample@1.0.0"
                np.testing.assert_array_equal(np.array(got["outputs"]["scores"], np.float32),
                                              expected["scores"])
                np.testing.assert_array_equal(got["outputs"]["label"], expected["label"])
            blocking.release.set()
            assert runner.drain()
        report = runner.collect(device_id="dev-1", seq=1, active=active.bundle)
    finally:
        blocking.release.set()
        runner.stop()
    assert report is not None
    # one sample ran, queue_size=2 waited, the other 3 overflowed and were counted
    assert report.samples == 3 and report.dropped == 3 and report.candidate_errors == 0
    assert report.candidate == "sample@1.1.0" and report.active == "sample@1.0.0"
    assert report.task == "classifier"
    assert report.mae is not None and report.mae > 0  # the candidate really differs
    assert report.top1_agreement is not None and 0.0 <= report.top1_agreement <= 1.0
    assert report.latency_ms_candidate is not None and report.latency_ms_active is not None
    assert blocking.calls == 3


def test_offer_returns_without_running_the_candidate_on_the_callers_thread(
    active: ModelRuntime, slow_candidate: tuple[ModelRuntime, BlockingSession]
) -> None:
    cand, blocking = slow_candidate
    runner = ShadowRunner(ShadowConfig(queue_size=4, cpu_budget=1.0, burst_s=60.0))
    runner.set_candidate(Candidate(cand, "c" * 64, sample_rate=1.0))
    pred = active.predict({"features": X})
    assert runner.offer({"features": X}, pred.outputs, pred.latency_ms) is True
    assert blocking.calls == 0  # queued only: the worker is not even started
    runner.start()
    assert blocking.started.wait(10)
    blocking.release.set()
    assert runner.drain()
    runner.stop()
    assert blocking.calls == 1


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class CostlyRuntime:
    """A candidate whose every run costs one second of the fake clock."""

    def __init__(self, inner: ModelRuntime, clock: FakeClock) -> None:
        self.inner, self.clock = inner, clock
        self.manifest, self.bundle = inner.manifest, inner.bundle
        self.delegate, self.session = inner.delegate, inner.session

    def predict(self, inputs: Any) -> Any:
        self.clock.t += 1.0
        return self.inner.predict(inputs)

    def close(self) -> None:
        self.inner.close()


def run_queued(runner: ShadowRunner) -> None:
    while not runner._queue.empty():
        item = runner._queue.get_nowait()
        assert item is not None
        runner.process(*item)
        runner._queue.task_done()


def test_cpu_budget_drops_and_counts_samples_once_the_candidate_used_its_share(
    active: ModelRuntime, make_slot: Any, tmp_path: Path
) -> None:
    clock = FakeClock()
    model = write_sample_model(tmp_path / "c.onnx", seed=1)
    cand = CostlyRuntime(ModelRuntime.load(make_slot(model, "c", version="2.0.0")), clock)
    runner = ShadowRunner(ShadowConfig(queue_size=8, cpu_budget=0.25, burst_s=0.25),
                          clock=clock)
    runner.set_candidate(Candidate(cand, "d" * 64, sample_rate=1.0))
    pred = active.predict({"features": X})

    def offer() -> bool:
        return runner.offer({"features": X}, pred.outputs, pred.latency_ms)

    assert offer() is True
    run_queued(runner)  # a 1 s run against a 0.25 s bucket (+0.25 s refilled meanwhile)
    assert offer() is False  # 0.5 s in debt
    clock.t += 2.0  # refills 0.5 s: back to zero, still no credit
    assert offer() is False
    clock.t += 1.0
    assert offer() is True
    run_queued(runner)
    report = runner.collect(device_id="dev-1", seq=2, active=active.bundle)
    assert report is not None and report.samples == 2 and report.dropped == 2
    assert runner.total_dropped == 2
    runner.stop()


def test_sample_rate_zero_never_queues_and_no_candidate_reports_nothing(
    active: ModelRuntime, make_slot: Any, sample_onnx: Path
) -> None:
    runner = ShadowRunner()
    pred = active.predict({"features": X})
    assert runner.offer({"features": X}, pred.outputs, pred.latency_ms) is False
    assert runner.collect(device_id="dev-1", seq=1, active=active.bundle) is None
    cand = ModelRuntime.load(make_slot(sample_onnx, "same"))
    runner.set_candidate(Candidate(cand, "e" * 64, sample_rate=0.0))
    assert all(not runner.offer({"features": X}, pred.outputs, 0.1) for _ in range(50))
    report = runner.collect(device_id="dev-1", seq=2, active=active.bundle)
    assert report is not None and report.samples == 0 and report.dropped == 0
    assert report.top1_agreement is None and report.latency_ms_candidate is None
    runner.stop()


def test_identical_candidate_agrees_fully_and_bad_inputs_count_as_candidate_errors(
    active: ModelRuntime, make_slot: Any, sample_onnx: Path
) -> None:
    cand = ModelRuntime.load(make_slot(sample_onnx, "same"))
    runner = ShadowRunner(ShadowConfig(cpu_budget=1.0, burst_s=60.0)).start()
    runner.set_candidate(Candidate(cand, "e" * 64, sample_rate=1.0))
    pred = active.predict({"features": X})
    runner.offer({"features": X}, pred.outputs, pred.latency_ms)
    runner.offer({"features": X[:, :3]}, pred.outputs, pred.latency_ms)  # candidate refuses
    assert runner.drain()
    report = runner.collect(device_id="dev-1", seq=3, active=active.bundle)
    runner.stop()
    assert report is not None
    assert report.samples == 1 and report.candidate_errors == 1
    assert report.top1_agreement == 1.0 and report.max_abs_error == 0.0
    assert report.cosine == pytest.approx(1.0)
    assert report.candidate_delegate == cand.delegate and report.candidate_fallback is False
