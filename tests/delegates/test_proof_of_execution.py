"""Proof of execution: which provider really ran how many nodes; silent fallback made loud."""

from __future__ import annotations

from pathlib import Path

import pytest

from delegates.base import execution_of
from delegates.onnxruntime_backend import OrtBackend
from delegates.ort_profile import count_nodes
from delegates.ort_providers import ORT_EPS, ort_spec
from delegates.registry import default_backends, probe_all


def test_cpu_session_reports_every_node_on_the_cpu_provider(sample_onnx: Path) -> None:
    session = OrtBackend().open(sample_onnx, {"intra_op_threads": 1})
    assert session.fallback is False and session.fallback_reason is None
    assert set(session.node_counts) == {"CPUExecutionProvider"}
    assert session.node_counts["CPUExecutionProvider"] >= 3
    assert execution_of(session).to_dict()["node_counts"] == session.node_counts


def test_requesting_cuda_without_it_is_a_reported_fallback_with_node_counts(
    sample_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = OrtBackend("CUDAExecutionProvider")
    if backend.probe().available:
        pytest.skip("this machine has CUDA; the fallback cannot be provoked here")
    monkeypatch.chdir(tmp_path)
    session = backend.open(sample_onnx, {})
    assert session.fallback is True
    assert session.node_counts.get("CUDAExecutionProvider", 0) == 0
    assert session.node_counts["CPUExecutionProvider"] >= 3
    assert "CUDAExecutionProvider was requested" in (session.fallback_reason or "")
    assert "CPUExecutionProvider=" in (session.fallback_reason or "")
    record = execution_of(session).to_dict()
    assert record["fallback"] is True and record["requested"] == "CUDAExecutionProvider"
    assert list(tmp_path.iterdir()) == []  # the profile file is deleted, nothing left


def test_node_counts_are_distinct_nodes_per_provider() -> None:
    events = [
        {"cat": "Session", "name": "model_run"},
        {"cat": "Node", "name": "mm_kernel_time", "args": {"provider": "CUDAExecutionProvider"}},
        {"cat": "Node", "name": "mm_fence_before", "args": {"provider": "CUDAExecutionProvider"}},
        {"cat": "Node", "name": "sm_kernel_time", "args": {"provider": "CPUExecutionProvider"}},
        {"cat": "Node", "name": "odd", "args": {}},
    ]
    assert count_nodes(events) == {"CPUExecutionProvider": 1, "CUDAExecutionProvider": 1}


def test_unknown_provider_option_is_refused_by_name(sample_onnx: Path) -> None:
    from delegates.base import DelegateError

    spec = ort_spec("cpu")
    backend = OrtBackend(spec.provider, name="cpu", option_keys=spec.option_keys)
    with pytest.raises(DelegateError, match="unknown provider option 'devic_id'"):
        backend.open(sample_onnx, {"provider_options": {"devic_id": 0}})


def test_registry_lists_every_ort_ep_litert_and_coreml_with_reasons() -> None:
    names = [b.name for b in default_backends()]
    for spec in ORT_EPS:
        assert spec.name in names
    assert {"litert", "litert-ref", "coreml-native"} <= set(names)
    for probe in probe_all():
        assert probe.available or probe.reason
