"""A real multi-format bundle (ONNX fp32, ONNX int8, TFLite) opened by the agent's runtime:
the policy picks among formats, TFLite runs on LiteRT, and the choice is reported."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from device_agent.runtime import ModelRuntime
from device_agent.variant_selection import Override
from model_bundles.builder import build_bundle
from model_bundles.keys import generate_keypair, key_id, load_public_key
from model_bundles.manifest import Manifest
from model_bundles.verify import extract_verified

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_tiny_tflite import reference  # noqa: E402
from tiny_twin import TFLITE, write_int8_twin, write_onnx_twin  # noqa: E402

pytest.importorskip("ai_edge_litert.interpreter")


@pytest.fixture(scope="module")
def slot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle as the installer leaves it: ``manifest.json`` + ``files/``."""
    tmp = tmp_path_factory.mktemp("multi")
    fp32 = write_onnx_twin(tmp / "tiny.onnx")
    int8 = write_int8_twin(fp32, tmp / "tiny-int8.onnx")
    priv, pub = generate_keypair(tmp / "keys")
    manifest = build_bundle([fp32, int8, TFLITE], name="tiny", version="1.0.0",
                            key_path=priv, out=tmp / "tiny.efb")
    key = load_public_key(pub)
    slot = tmp / "slot"
    slot.mkdir()
    extract_verified(tmp / "tiny.efb", slot / "files", {key_id(key): key})
    (slot / "manifest.json").write_bytes(manifest.to_bytes())
    return slot


PREFERRED = ["cuda", "litert", "litert-ref", "cpu"]


def test_override_to_litert_serves_the_tflite_variant_by_manifest_names(slot: Path) -> None:
    rt = ModelRuntime.load(slot, PREFERRED, gate=True, override=Override(delegate="litert"))
    try:
        assert rt.variant.id == "tflite-fp32"
        ex = rt.execution
        assert ex["delegate"] == "litert:xnnpack" and ex["fallback"] is False
        assert ex["variant"] == "tflite-fp32" and ex["node_counts"]["xnnpack"] >= 1
        assert ex["choice"] == "operator override delegate=litert"
        assert ex["override"] == {"requested": "delegate=litert", "honoured": True}
        x = np.random.default_rng(5).standard_normal((3, 16)).astype(np.float32)
        out = rt.predict({"features": x}).outputs  # batch 3 on a [1, 16] model: resized
        assert list(out) == ["scores"]
        np.testing.assert_allclose(out["scores"], reference(x), atol=1e-5)
        # every ONNX and TFLite pair was gated; the absent accelerator is recorded once
        passed = {(o.variant, o.delegate) for o in rt.outcomes if o.result == "passed"}
        assert {("onnx-fp32", "cpu"), ("onnx-int8", "cpu"), ("tflite-fp32", "litert"),
                ("tflite-fp32", "litert-ref")} <= passed
        assert any(a.startswith("cuda: skipped") for a in rt.attempts)
        assert any(a.startswith("tflite-fp32/cpu: skipped (does not run tflite") for a in rt.attempts)
    finally:
        rt.close()


def test_variant_override_picks_int8_onnx(slot: Path) -> None:
    rt = ModelRuntime.load(slot, PREFERRED, gate=True, override=Override(variant="onnx-int8"))
    try:
        assert (rt.variant.id, rt.delegate) == ("onnx-int8", "onnxruntime:CPUExecutionProvider")
        assert rt.execution["override"]["honoured"] is True
    finally:
        rt.close()


def test_override_to_an_absent_accelerator_falls_back_and_says_why(slot: Path) -> None:
    rt = ModelRuntime.load(slot, PREFERRED, gate=True, override=Override(delegate="cuda"))
    try:
        ex = rt.execution
        assert ex["override"] == {"requested": "delegate=cuda", "honoured": False}
        assert "operator override delegate=cuda not honoured (cuda: skipped" in ex["choice"]
        assert "fastest passing pair" in ex["choice"]
        assert rt.variant.id in {"onnx-fp32", "onnx-int8", "tflite-fp32"}
    finally:
        rt.close()


def test_manifest_of_the_slot_lists_three_formats(slot: Path) -> None:
    m = Manifest.from_bytes((slot / "manifest.json").read_bytes())
    assert [(v.id, v.format) for v in m.variants] == [
        ("onnx-fp32", "onnx"), ("onnx-int8", "onnx"), ("tflite-fp32", "tflite")]


def test_tflite_with_its_own_tensor_names_is_fed_and_read_by_position(tmp_path: Path) -> None:
    renamed = tmp_path / "renamed.tflite"  # same-length renames keep the flatbuffer valid
    data = TFLITE.read_bytes()
    assert data.count(b"features") == 1 and data.count(b"scores") == 1
    renamed.write_bytes(data.replace(b"features", b"serving0").replace(b"scores", b"out__0"))
    fp32 = write_onnx_twin(tmp_path / "tiny.onnx")
    priv, pub = generate_keypair(tmp_path / "keys")
    manifest = build_bundle([fp32, renamed], name="tiny", version="1.0.0", key_path=priv,
                            out=tmp_path / "t.efb")
    key = load_public_key(pub)
    slot = tmp_path / "slot"
    slot.mkdir()
    extract_verified(tmp_path / "t.efb", slot / "files", {key_id(key): key})
    (slot / "manifest.json").write_bytes(manifest.to_bytes())
    rt = ModelRuntime.load(slot, ["litert"], gate=True)
    try:
        assert rt.session.input_names == ("features",)
        x = np.ones((1, 16), np.float32)
        out = rt.predict({"features": x}).outputs
        np.testing.assert_allclose(out["scores"], reference(x), atol=1e-5)
        assert rt.execution["delegate"] == "litert:xnnpack"
    finally:
        rt.close()
