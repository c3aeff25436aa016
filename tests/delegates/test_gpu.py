"""CUDA / TensorRT (marked gpu; skip without an NVIDIA GPU and the onnxruntime-gpu build)."""

from __future__ import annotations

from pathlib import Path

import pytest

from delegates.onnxruntime_backend import ort_backends

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", ["cuda", "tensorrt"])
def test_gpu_provider_is_selected_and_passes_the_golden_gate(
    name: str, sample_onnx: Path, make_gpu_slot: object
) -> None:
    from device_agent.runtime import ModelRuntime

    backend = {b.name: b for b in ort_backends()}[name]
    if not backend.probe().available:
        pytest.skip(f"{name}: {backend.probe().reason}")
    rt = ModelRuntime.load(make_gpu_slot(sample_onnx), [name, "cpu"], gate=True)  # type: ignore[operator]
    ex = rt.execution
    assert ex["fallback"] is False, ex["fallback_reason"]
    assert rt.delegate == f"onnxruntime:{backend.provider}"
    assert ex["node_counts"].get(backend.provider, 0) >= 1
    print(f"{name}: node counts {ex['node_counts']}; {rt.attempts[-1]}")


@pytest.fixture
def make_gpu_slot(tmp_path: Path):  # noqa: ANN201
    from tests.device_agent.conftest import write_slot

    def make(model: Path) -> Path:
        slot = tmp_path / "slot"
        write_slot(slot, model)
        return slot

    return make
