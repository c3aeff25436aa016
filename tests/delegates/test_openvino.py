"""OpenVINO EP (needs the onnxruntime-openvino wheel: scripts/test-openvino.sh)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from delegates.base import DelegateError
from delegates.onnxruntime_backend import ort_backends

pytestmark = pytest.mark.openvino


def _backend(name: str):  # noqa: ANN202
    backend = {b.name: b for b in ort_backends()}[name]
    if "OpenVINOExecutionProvider" not in backend.probe().details.get("ort_providers", []):
        pytest.skip("OpenVINO execution provider not in this onnxruntime build")
    return backend


def test_openvino_cpu_session_runs_the_sample_model_on_openvino(sample_onnx: Path) -> None:
    session = _backend("openvino").open(sample_onnx, {})
    assert session.fallback is False, session.fallback_reason
    assert session.delegate == "onnxruntime:OpenVINOExecutionProvider"
    assert session.node_counts.get("OpenVINOExecutionProvider", 0) >= 1
    out = session.run({"features": np.ones((2, 16), np.float32)})
    np.testing.assert_allclose(out["scores"].sum(axis=1), 1.0, rtol=1e-4)


@pytest.mark.parametrize("name", ["openvino-gpu", "openvino-npu"])
def test_openvino_device_this_machine_lacks_is_a_detected_fallback(
    sample_onnx: Path, name: str
) -> None:
    try:
        session = _backend(name).open(sample_onnx, {})
    except DelegateError as e:  # some OpenVINO builds refuse the device outright: not silent
        assert "could not open" in str(e)
        return
    if session.node_counts.get("OpenVINOExecutionProvider", 0) > 0:
        pytest.skip(f"this machine has the {name} device")
    assert session.fallback is True and session.fallback_reason
    assert session.node_counts.get("CPUExecutionProvider", 0) >= 1
