"""The shadow budget with real ONNX Runtime models in the real worker thread: at the
default budget shadow still produces comparisons while the caller keeps the active
model's exact answer; a device reporting a critical temperature (fake sysfs tree) runs no
candidate at all and counts its samples as dropped, and resumes once it cools."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device_agent.runtime import ModelRuntime
from device_agent.shadow import Candidate, ShadowConfig, ShadowRunner
from model_bundles.input_stats import compute_input_stats
from model_bundles.manifest import TensorSpec
from model_bundles.samples import write_sample_model

X = np.random.default_rng(5).standard_normal((2, 16)).astype(np.float32)


@pytest.fixture
def pair(make_slot: Any, sample_onnx: Path, tmp_path: Path) -> Any:
    active = ModelRuntime.load(make_slot(sample_onnx, "active"), gate=True)
    model = write_sample_model(tmp_path / "cand.onnx", seed=1)  # other weights
    cand = ModelRuntime.load(make_slot(model, "cand", version="1.1.0"), gate=True,
                             options={"intra_op_threads": 1})
    yield active, cand
    active.close()


def serve(active: ModelRuntime, runner: ShadowRunner, calls: int) -> list[dict[str, Any]]:
    """What ``Agent.predict`` does, with idle gaps between calls; returns the answers."""
    answers = []
    for _ in range(calls):
        pred = active.predict({"features": X})
        runner.offer({"features": X}, pred.outputs, pred.latency_ms)
        answers.append(pred.outputs)
        time.sleep(0.002)
    return answers


def test_default_budget_still_produces_comparisons_and_never_the_candidates_answer(
    pair: tuple[ModelRuntime, ModelRuntime],
) -> None:
    active, cand = pair
    expected = active.predict({"features": X}).outputs
    assert not np.array_equal(cand.predict({"features": X}).outputs["scores"],
                              expected["scores"])  # the candidate really answers otherwise
    runner = ShadowRunner().start()  # the default budget
    runner.set_candidate(Candidate(cand, "a" * 64, sample_rate=1.0))
    try:
        answers = serve(active, runner, 60)
        assert runner.drain()
        report = runner.collect(device_id="dev-1", seq=1, active=active.bundle)
    finally:
        runner.stop()
    for got in answers:
        np.testing.assert_array_equal(got["scores"], expected["scores"])
        np.testing.assert_array_equal(got["label"], expected["label"])
    assert report is not None and report.candidate == "sample@1.1.0"
    assert report.samples >= 1 and report.candidate_errors == 0
    assert report.samples + report.dropped <= 60
    assert report.mae is not None and report.mae > 0
    assert runner.total_samples == report.samples and runner.total_dropped == report.dropped


def test_critical_temperature_pauses_shadow_and_counts_drops_until_it_cools(
    pair: tuple[ModelRuntime, ModelRuntime], tmp_path: Path,
) -> None:
    active, cand = pair
    zone = tmp_path / "sys" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("95000\n")
    # a pace that refills within the test (the hot spell used the banked samples up)
    runner = ShadowRunner(ShadowConfig(sysfs_root=str(tmp_path / "sys"), hints_every_s=0.0,
                                       samples_per_minute=6000.0)).start()
    runner.set_candidate(Candidate(cand, "b" * 64, sample_rate=1.0))
    try:
        serve(active, runner, 10)
        assert runner.drain()
        hot = runner.collect(device_id="dev-1", seq=1, active=active.bundle)
        assert hot is not None and hot.samples == 0 and hot.dropped >= 1
        assert runner.drops_by_reason == {"paused": hot.dropped}
        assert runner.budget.reading.temp_c == 95.0
        (zone / "temp").write_text("40000\n")
        serve(active, runner, 10)
        assert runner.drain()
        cool = runner.collect(device_id="dev-1", seq=2, active=active.bundle)
    finally:
        runner.stop()
    assert cool is not None and cool.samples >= 1 and cool.candidate_errors == 0
    assert runner.budget.reading.temp_c == 40.0


def test_drift_rows_keep_coming_when_the_candidate_pace_is_met_and_carry_over_short_windows(
    pair: tuple[ModelRuntime, ModelRuntime],
) -> None:
    active, cand = pair
    ref_rows = np.random.default_rng(0).standard_normal((400, 16)).astype(np.float32)
    reference = compute_input_stats([TensorSpec("features", "float32", ("N", 16))],
                                    {"features": ref_rows})
    # one candidate sample at most (the burst), but drift-only rows at a high pace
    runner = ShadowRunner(ShadowConfig(samples_per_minute=0.001, sample_burst=1,
                                       drift_per_minute=60000.0)).start()
    runner.set_candidate(Candidate(cand, "c" * 64, sample_rate=1.0, reference=reference))
    try:
        serve(active, runner, 3)  # 6 rows: too few for a drift statistic
        assert runner.drain()
        short = runner.collect(device_id="dev-1", seq=1, active=active.bundle)
        serve(active, runner, 30)
        assert runner.drain()
        full = runner.collect(device_id="dev-1", seq=2, active=active.bundle)
    finally:
        runner.stop()
    assert short is not None and short.drift == {} and short.samples <= 1
    assert full is not None and full.samples == 0 and full.dropped == 0
    assert "features" in full.drift  # rows from both windows, none from candidate runs
