"""Probe and policy: fakes implement the real Backend protocol; skip reasons are kept."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from delegates.base import Backend, DelegateUnavailableError, ProbeResult, Session
from delegates.policy import select
from delegates.registry import default_backends, probe_all


class FakeNpuBackend:
    """Stands in for hardware we lack (an NPU); implements the real Backend protocol."""

    formats = frozenset({"onnx"})

    def __init__(self, name: str, present: bool, raises: bool = False) -> None:
        self.name = name
        self.present = present
        self.raises = raises

    def probe(self) -> ProbeResult:
        if self.raises:
            raise OSError("driver crashed while probing")
        if self.present:
            return ProbeResult(self.name, True, "", {"cores": 2})
        return ProbeResult(self.name, False, "no /dev/npu0 device")

    def open(self, model_path: Path, options: Mapping[str, Any]) -> Session:
        raise DelegateUnavailableError(f"{self.name} cannot open {model_path}")


def test_fake_backend_satisfies_the_backend_protocol() -> None:
    assert isinstance(FakeNpuBackend("npu", True), Backend)


def test_probe_all_reports_a_raising_probe_as_unavailable_with_its_reason() -> None:
    results = probe_all([FakeNpuBackend("npu", True, raises=True), FakeNpuBackend("dsp", True)])
    assert [r.name for r in results] == ["npu", "dsp"]
    assert results[0].available is False
    assert "driver crashed" in results[0].reason
    assert results[1].available is True


def test_select_orders_available_delegates_and_records_why_others_were_skipped() -> None:
    probes = probe_all(
        [FakeNpuBackend("npu", False), FakeNpuBackend("gpu", True), FakeNpuBackend("cpu", True)]
    )
    sel = select(["npu", "tpu", "gpu", "cpu", "gpu"], probes)
    assert sel.candidates == ("gpu", "cpu")
    assert sel.first == "gpu"
    assert sel.skip_reason("npu") == "no /dev/npu0 device"
    assert "unknown delegate" in (sel.skip_reason("tpu") or "")
    assert [s.name for s in sel.skipped] == ["npu", "tpu"]


def test_select_respects_the_variant_allow_list() -> None:
    probes = [ProbeResult("gpu", True), ProbeResult("cpu", True)]
    sel = select(["gpu", "cpu"], probes, allowed=["cpu"])
    assert sel.candidates == ("cpu",)
    assert "not allowed by the variant" in (sel.skip_reason("gpu") or "")


def test_select_with_nothing_available_returns_no_candidates_and_every_reason() -> None:
    sel = select(["npu"], [ProbeResult("npu", False, "absent")])
    assert sel.first is None
    assert sel.skip_reason("npu") == "absent"


def test_unavailable_probe_result_without_reason_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a reason"):
        ProbeResult("npu", False)


def test_default_backends_probe_lists_cpu_available_and_accelerators_with_reasons() -> None:
    results = {r.name: r for r in probe_all(default_backends())}
    assert results["cpu"].available is True
    assert {"cuda", "tensorrt", "openvino", "coreml", "qnn", "nnapi", "xnnpack"} <= set(results)
    for r in results.values():
        assert r.available or r.reason
