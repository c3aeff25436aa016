"""Multi-variant slots: the agent picks (variant, delegate) by the documented policy."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from delegates.base import ProbeResult
from device_agent.errors import SlotError
from device_agent.runtime import ModelRuntime
from device_agent.variant_selection import Outcome, Override, choose, plan, worth_probing
from model_bundles.manifest import Manifest

from .conftest import write_slot


def _other_mlp(path: Path) -> Path:
    """Same signature as the sample model, different weights: fails the sample's golden."""
    rng = np.random.default_rng(11)
    w = rng.standard_normal((16, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["scores"], axis=-1),
         helper.make_node("ArgMax", ["logits"], ["label"], axis=-1, keepdims=0)],
        "other",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _slot(tmp: Path, sample: Path, extra: list[tuple[str, Path]], *, first: bool = True) -> Path:
    """A slot with the sample as ``onnx-fp32`` plus ``extra`` (id, model) variants."""
    slot = tmp / "slot"
    base = write_slot(slot, sample).to_dict()
    variants = []
    for vid, model in extra:
        rel = f"model-{vid}.onnx"
        shutil.copy(model, slot / "files" / rel)
        data = (slot / "files" / rel).read_bytes()
        base["files"].append({"path": rel, "sha256": hashlib.sha256(data).hexdigest(),
                              "size": len(data)})
        variants.append({**base["variants"][0], "id": vid, "file": rel})
    base["files"].sort(key=lambda f: f["path"])
    base["variants"] = variants + base["variants"] if first else base["variants"] + variants
    (slot / "manifest.json").write_bytes(Manifest.from_dict(base).to_bytes())
    return slot


def test_variant_failing_the_gate_is_skipped_with_its_error_and_the_next_serves(
    tmp_path: Path, sample_onnx: Path
) -> None:
    slot = _slot(tmp_path, sample_onnx, [("onnx-bad", _other_mlp(tmp_path / "bad.onnx"))])
    rt = ModelRuntime.load(slot, ["cpu"], gate=True)
    assert rt.variant.id == "onnx-fp32"
    bad = [o for o in rt.outcomes if o.variant == "onnx-bad"][0]
    assert bad.result == "gate-failed" and bad.max_abs_error is not None
    assert bad.max_abs_error > 1e-3
    assert any(a.startswith("onnx-bad/cpu: golden gate failed") for a in rt.attempts)
    assert rt.attempts[-1].startswith("cpu: selected")
    ex = rt.execution
    assert ex["variant"] == "onnx-fp32" and ex["fallback"] is False
    assert ex["node_counts"]["CPUExecutionProvider"] >= 1


def test_no_variant_passing_the_gate_refuses_the_slot_naming_each_error(
    tmp_path: Path, sample_onnx: Path
) -> None:
    slot = write_slot(tmp_path / "s", sample_onnx, corrupt_golden=True) and tmp_path / "s"
    with pytest.raises(SlotError, match="onnx-fp32/cpu: golden gate failed"):
        ModelRuntime.load(slot, ["cpu"], gate=True)


def test_operator_override_wins_among_passing_pairs(tmp_path: Path, sample_onnx: Path) -> None:
    slot = _slot(tmp_path, sample_onnx, [("onnx-copy", sample_onnx)], first=False)
    rt = ModelRuntime.load(slot, ["cpu"], gate=True, override=Override(variant="onnx-copy"))
    assert rt.variant.id == "onnx-copy" and rt.choice == "operator override variant=onnx-copy"


def test_failed_override_falls_back_to_the_policy_and_says_so(
    tmp_path: Path, sample_onnx: Path
) -> None:
    slot = _slot(tmp_path, sample_onnx, [("onnx-bad", _other_mlp(tmp_path / "bad.onnx"))])
    rt = ModelRuntime.load(slot, ["cpu"], gate=True, override=Override(variant="onnx-bad"))
    assert rt.variant.id == "onnx-fp32"
    assert rt.choice.startswith("operator override variant=onnx-bad not honoured "
                                "(onnx-bad/cpu: golden gate failed")
    assert "fastest passing pair" in rt.choice or "first passing pair" in rt.choice
    assert any(o.preferred and o.result == "gate-failed" for o in rt.outcomes)


def test_fastest_passing_pair_is_chosen_from_measured_latencies() -> None:
    outs = [Outcome("a", "cpu", "passed", "", 0.0, 2.0), Outcome("b", "cpu", "passed", "", 0.0, 1.0),
            Outcome("c", "cpu", "gate-failed", "", 9.0)]
    best, why = choose(outs)
    assert best is not None and best.variant == "b" and why.startswith("fastest")
    assert choose(outs[2:]) == (None, "no (variant, delegate) pair passed the golden gate")


def test_plan_skips_unavailable_delegates_once_and_formats_per_pair() -> None:
    m = Manifest.from_dict({
        "format_version": 1, "name": "m", "version": "1.0.0",
        "created_at": "2026-11-29T02:50:00Z", "task": "classifier",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 4]}],
        "files": [{"path": p, "sha256": "0" * 64, "size": 1} for p in ("a.onnx", "b.tflite")],
        "variants": [
            {"id": "fp32", "file": "a.onnx", "format": "onnx", "precision": "fp32",
             "delegates": ["cpu"], "tolerance": {"atol": 1e-4, "rtol": 1e-3}},
            {"id": "int8-tfl", "file": "b.tflite", "format": "tflite", "precision": "int8",
             "delegates": ["litert"], "tolerance": {"atol": 5e-2, "rtol": 5e-2}}],
        "golden": None, "latency_budget_ms": None, "publisher_key_id": "0" * 64})
    probes = [ProbeResult("cuda", False, "no GPU"), ProbeResult("cpu", True),
              ProbeResult("litert", True)]
    formats = {"cuda": frozenset({"onnx"}), "cpu": frozenset({"onnx"}),
               "litert": frozenset({"tflite"})}
    cands, skipped = plan(m.variants, ["cuda", "litert", "cpu"], probes, formats)
    assert [(c.variant, c.delegate) for c in cands] == [("int8-tfl", "litert"), ("fp32", "cpu")]
    assert [s.line() for s in skipped] == [
        "cuda: skipped (no GPU)",
        "fp32/litert: skipped (does not run onnx)",
        "int8-tfl/cpu: skipped (does not run tflite)"]


def test_only_delegates_that_could_serve_a_variant_are_probed() -> None:
    """Probing imports a delegate's runtime (LiteRT: ~8 MiB resident): an ONNX-only
    bundle probes none of the TFLite backends, whatever the preference says; a delegate
    left out is still recorded, per pair, as not running the bundle's format."""
    from delegates.registry import default_backends

    m = Manifest.from_dict({
        "format_version": 1, "name": "m", "version": "1.0.0",
        "created_at": "2026-11-29T02:50:00Z", "task": "classifier",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 4]}],
        "files": [{"path": "a.onnx", "sha256": "0" * 64, "size": 1}],
        "variants": [{"id": "fp32", "file": "a.onnx", "format": "onnx", "precision": "fp32",
                      "delegates": ["cpu"], "tolerance": {"atol": 1e-4, "rtol": 1e-3}}],
        "golden": None, "latency_budget_ms": None, "publisher_key_id": "0" * 64})
    backends = default_backends()
    chosen = worth_probing(backends, ["litert", "cuda", "cpu"], m.variants,
                           Override(delegate="openvino"))
    assert [b.name for b in chosen] == ["cuda", "openvino", "cpu"]
    assert [b.name for b in worth_probing(backends, ["litert", "nope"], m.variants)] == []
    formats = {b.name: b.formats for b in backends}
    probes = [ProbeResult("cpu", True)]
    cands, skipped = plan(m.variants, ["litert", "nope", "cpu"], probes, formats)
    assert [(c.variant, c.delegate) for c in cands] == [("fp32", "cpu")]
    assert [s.line() for s in skipped] == [
        "fp32/litert: skipped (does not run onnx)",
        "nope: skipped (unknown delegate (no backend of that name))"]


def test_override_to_an_absent_delegate_falls_back_with_the_probe_reason(
    tmp_path: Path, sample_onnx: Path
) -> None:
    slot = write_slot(tmp_path / "s", sample_onnx) and tmp_path / "s"
    rt = ModelRuntime.load(slot, ["cpu"], gate=True, override=Override(delegate="tensorrt"))
    assert rt.delegate == "onnxruntime:CPUExecutionProvider"
    assert rt.choice.startswith("operator override delegate=tensorrt not honoured (tensorrt: "
                                "skipped (")
    assert rt.execution["choice"] == rt.choice and rt.execution["fallback"] is False
    assert any(a.startswith("tensorrt: skipped") for a in rt.attempts)
