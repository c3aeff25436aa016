"""A real ONNX Runtime session, and the CPU fallback that ORT does silently, made visible."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from delegates.base import DelegateError, Session
from delegates.onnxruntime_backend import OrtBackend


def test_cpu_session_runs_the_sample_model_and_names_its_delegate(sample_onnx: Path) -> None:
    session = OrtBackend().open(sample_onnx, {"intra_op_threads": 1})
    assert isinstance(session, Session)
    assert session.delegate == "onnxruntime:CPUExecutionProvider"
    assert session.fallback is False
    assert session.input_names == ("features",)
    assert session.output_names == ("scores", "label")
    out = session.run({"features": np.ones((3, 16), np.float32)})
    assert out["scores"].shape == (3, 4)
    assert out["label"].dtype == np.int64
    np.testing.assert_allclose(out["scores"].sum(axis=1), 1.0, rtol=1e-5)
    session.close()


def test_requested_cuda_on_a_machine_without_it_is_reported_as_fallback(
    sample_onnx: Path,
) -> None:
    backend = OrtBackend("CUDAExecutionProvider")
    probe = backend.probe()
    if probe.available:
        pytest.skip("this machine has CUDA; the fallback cannot be provoked here")
    assert backend.name == "cuda"
    assert "CUDAExecutionProvider" in probe.reason
    session = backend.open(sample_onnx, {})
    assert session.requested == "CUDAExecutionProvider"
    assert session.fallback is True
    assert session.delegate == "onnxruntime:CPUExecutionProvider"
    assert "CUDAExecutionProvider" not in session.providers


def test_opening_a_corrupt_model_raises_delegate_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(DelegateError, match="bad.onnx"):
        OrtBackend().open(bad, {})


def test_running_with_a_wrong_dtype_raises_delegate_error(sample_onnx: Path) -> None:
    session = OrtBackend().open(sample_onnx, {})
    with pytest.raises(DelegateError, match="run failed"):
        session.run({"features": np.ones((1, 16), np.int64)})


def test_a_cpu_session_runs_on_the_binding_with_the_public_runs_results_and_refusals(
        sample_onnx: Path) -> None:
    """A CPU-only session skips ``InferenceSession.run``'s Python wrapper (the agent's
    per-call budget); outputs equal the public call's, and a missing input, an unknown
    input or a closed session are still refused with a ``DelegateError``."""
    import onnxruntime as ort

    session = OrtBackend().open(sample_onnx, {"intra_op_threads": 1})
    assert session._run is not None
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
    want = ort.InferenceSession(str(sample_onnx), providers=["CPUExecutionProvider"]).run(
        None, {"features": x})
    got = session.run({"features": x})
    np.testing.assert_array_equal(got["scores"], want[0])
    np.testing.assert_array_equal(got["label"], want[1])
    with pytest.raises(DelegateError, match="run failed.*features"):
        session.run({})
    with pytest.raises(DelegateError, match="run failed"):
        session.run({"features": x, "pixels": x})
    session.close()
    with pytest.raises(DelegateError, match="run failed"):
        session.run({"features": x})
