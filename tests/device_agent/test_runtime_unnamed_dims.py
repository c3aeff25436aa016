"""A bundle built from a model that declares dynamic dimensions as ``-1`` (and leaves one
without value or name) is opened by the agent's runtime on real ONNX Runtime: the golden
gate passes and requests of any size on those axes are served, while fixed axes are still
held to their size."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from device_agent.errors import PredictError
from device_agent.runtime import ModelRuntime
from model_bundles.builder import build_bundle
from model_bundles.keys import generate_keypair, key_id, load_public_key
from model_bundles.verify import extract_verified

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))
from unnamed_dims_model import ODD_INPUT, write_unnamed_dims_model  # noqa: E402


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> ModelRuntime:
    tmp = tmp_path_factory.mktemp("unnamed")
    model = write_unnamed_dims_model(tmp / "unnamed.onnx")
    priv, pub = generate_keypair(tmp / "keys")
    manifest = build_bundle([model], name="unnamed", version="1.0.0", key_path=priv,
                            out=tmp / "u.efb", dims={"x:0": 3, f"{ODD_INPUT}:1": 2})
    key = load_public_key(pub)
    slot = tmp / "slot"
    slot.mkdir()
    extract_verified(tmp / "u.efb", slot / "files", {key_id(key): key})
    (slot / "manifest.json").write_bytes(manifest.to_bytes())
    return ModelRuntime.load(slot, ["cpu"], gate=True)


def test_golden_gate_passes_on_a_minus_one_bundle(runtime: ModelRuntime) -> None:
    result = runtime.golden_check()
    assert result.passed, result.detail
    assert runtime.manifest.inputs[0].shape == (None, 4)


def test_minus_one_axes_take_any_size_in_a_request(runtime: ModelRuntime) -> None:
    x = np.linspace(-1, 1, 7 * 4, dtype=np.float32).reshape(7, 4)
    odd = np.arange(2 * 9 * 3, dtype=np.float32).reshape(2, 9, 3)
    ids = np.arange(5 * 6, dtype=np.int64).reshape(5, 6)
    pred = runtime.predict({"x": x, ODD_INPUT: odd, "ids": ids})
    np.testing.assert_array_equal(pred.outputs["relu"], np.maximum(x, 0))
    np.testing.assert_array_equal(pred.outputs["neg"], -odd)
    np.testing.assert_array_equal(pred.outputs["ids_out"], ids)


def test_fixed_axes_next_to_minus_one_ones_are_still_checked(runtime: ModelRuntime) -> None:
    feeds = {"x": np.zeros((7, 5), np.float32), ODD_INPUT: np.zeros((2, 9, 3), np.float32),
             "ids": np.zeros((5, 6), np.int64)}
    with pytest.raises(PredictError, match="input 'x': dimension 1 must be 4, got 5"):
        runtime.predict(feeds)
    feeds["x"] = np.zeros((7, 4), np.float32)
    feeds[ODD_INPUT] = np.zeros((3, 9, 3), np.float32)
    with pytest.raises(PredictError, match="input 'input:0/x y': dimension 0 must be 2, got 3"):
        runtime.predict(feeds)
