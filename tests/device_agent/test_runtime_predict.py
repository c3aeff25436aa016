"""ModelRuntime: verified slots only, dtype casting, precise refusals, golden gate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("model_bundles.verify", reason="model_bundles.verify not written yet")
pytest.importorskip("model_bundles.golden", reason="model_bundles.golden not written yet")

from delegates.base import ProbeResult
from delegates.onnxruntime_backend import OrtBackend
from device_agent.errors import PredictError, SlotError
from device_agent.runtime import ModelRuntime


@pytest.fixture
def runtime(sample_onnx: Path, make_slot: Callable[..., Path]) -> ModelRuntime:
    return ModelRuntime.load(make_slot(sample_onnx), ["cpu"], gate=True)


def test_predict_casts_nested_python_lists_to_the_declared_dtype(runtime: ModelRuntime) -> None:
    pred = runtime.predict({"features": [[1] * 16, [0.5] * 16]})
    assert pred.bundle == "sample@1.0.0"
    assert pred.delegate == "onnxruntime:CPUExecutionProvider"
    assert pred.outputs["scores"].shape == (2, 4)
    assert pred.outputs["label"].dtype == np.int64
    assert pred.latency_ms >= 0
    same = runtime.predict({"features": np.array([[1] * 16, [0.5] * 16], np.float64)})
    np.testing.assert_array_equal(same.outputs["scores"], pred.outputs["scores"])


def test_predict_refuses_wrong_rank_with_the_expected_shape(runtime: ModelRuntime) -> None:
    with pytest.raises(PredictError, match=r"expected rank 2 .*got rank 1 \(shape \[16\]\)"):
        runtime.predict({"features": [0.0] * 16})


def test_predict_refuses_a_wrong_fixed_dimension(runtime: ModelRuntime) -> None:
    with pytest.raises(PredictError, match="dimension 1 must be 16, got 15"):
        runtime.predict({"features": [[0.0] * 15]})


def test_shapes_are_checked_again_when_they_change_after_good_calls(
        runtime: ModelRuntime) -> None:
    """The shape check is skipped only for the shapes of the last good call."""
    good = np.zeros((3, 16), np.float32)
    for _ in range(3):
        assert runtime.predict({"features": good}).outputs["scores"].shape == (3, 4)
    with pytest.raises(PredictError, match="dimension 1 must be 16, got 15"):
        runtime.predict({"features": np.zeros((3, 15), np.float32)})
    with pytest.raises(PredictError, match="expected rank 2"):
        runtime.predict({"features": np.zeros((3, 16, 1), np.float32)})
    assert runtime.predict({"features": good}).outputs["scores"].shape == (3, 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_arrays_of_the_declared_dtype_are_refused_after_good_calls(
        runtime: ModelRuntime, dtype: type, bad: float) -> None:
    x = np.zeros((1, 16), np.float32)
    runtime.predict({"features": x})
    x[0, 7] = bad
    with pytest.raises(PredictError, match="NaN or infinite"):
        runtime.predict({"features": x.astype(dtype)})


def test_huge_finite_values_pass_the_finite_check(runtime: ModelRuntime) -> None:
    """Squares of 1e30 overflow float32 in the fast check; the exact check lets them in."""
    x = np.full((1, 16), 1e30, np.float32)
    assert runtime.predict({"features": x}).outputs["scores"].shape == (1, 4)


def test_predict_refuses_unknown_and_missing_inputs(runtime: ModelRuntime) -> None:
    with pytest.raises(PredictError, match="unknown input 'pixels'; the model takes 'features'"):
        runtime.predict({"features": [[0.0] * 16], "pixels": [1]})
    with pytest.raises(PredictError, match="missing input 'features'"):
        runtime.predict({})


def test_predict_refuses_ragged_and_non_numeric_values(runtime: ModelRuntime) -> None:
    with pytest.raises(PredictError, match="cannot convert to float32"):
        runtime.predict({"features": [[0.0] * 16, [0.0] * 3]})
    with pytest.raises(PredictError, match="cannot convert to float32"):
        runtime.predict({"features": [["a"] * 16]})


def test_golden_check_passes_on_cpu_and_reports_max_error(runtime: ModelRuntime) -> None:
    result = runtime.golden_check()
    assert result.passed, result.detail
    assert result.max_abs_error <= 1e-4


def test_slot_whose_file_was_tampered_is_refused(
    sample_onnx: Path, make_slot: Callable[..., Path]
) -> None:
    slot = make_slot(sample_onnx)
    model = slot / "files" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    with pytest.raises(SlotError, match="does not match its manifest"):
        ModelRuntime.load(slot, ["cpu"])


def test_wrong_golden_outputs_fail_the_gate_on_every_delegate(
    sample_onnx: Path, make_slot: Callable[..., Path]
) -> None:
    slot = make_slot(sample_onnx, corrupt_golden=True)
    with pytest.raises(SlotError, match="golden gate failed"):
        ModelRuntime.load(slot, ["cpu"], gate=True)


def test_unavailable_preferred_delegate_is_skipped_with_its_reason(
    sample_onnx: Path, make_slot: Callable[..., Path]
) -> None:
    backends = [OrtBackend("CUDAExecutionProvider"), OrtBackend()]
    probes = [ProbeResult("cuda", False, "no GPU here"), ProbeResult("cpu", True)]
    rt = ModelRuntime.load(make_slot(sample_onnx), ["cuda", "cpu"], backends=backends,
                           probes=probes)
    assert rt.delegate == "onnxruntime:CPUExecutionProvider"
    assert rt.attempts[0] == "cuda: skipped (no GPU here)"
    assert rt.attempts[-1].startswith("cpu: selected")


def test_concurrent_predicts_from_threads_all_succeed(runtime: ModelRuntime) -> None:
    from concurrent.futures import ThreadPoolExecutor

    x = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    want = runtime.predict({"features": x}).outputs["label"]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: runtime.predict({"features": x}).outputs["label"],
                            range(32)))
    assert all(np.array_equal(g, want) for g in got)
