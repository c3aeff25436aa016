"""Golden vectors: generation, npz round trip, comparison."""

from __future__ import annotations

import io

import numpy as np
import pytest

from model_bundles.errors import GoldenError
from model_bundles.golden import (
    compare_outputs,
    generate_inputs,
    golden_bytes,
    read_golden,
    write_golden,
)
from model_bundles.manifest import Golden, Manifest, TensorSpec, Tolerance, canonical_json

SPECS_IN = [
    TensorSpec("x", "float32", ("batch", 3)),
    TensorSpec("ids", "int64", (None, 5)),
    TensorSpec("mask", "bool", (2,)),
]
SPECS_OUT = [TensorSpec("y", "float32", ("batch", 2)), TensorSpec("label", "int64", ("batch",))]


def _manifest(crafted, count=1) -> Manifest:
    doc = dict(crafted.manifest)
    doc["inputs"] = [s.to_dict() for s in SPECS_IN]
    doc["outputs"] = [s.to_dict() for s in SPECS_OUT]
    doc["golden"] = Golden("golden.npz", count, {"batch": count}).to_dict()
    return Manifest.from_bytes(canonical_json(doc))


def test_generate_inputs_deterministic_and_shaped():
    a = generate_inputs(SPECS_IN, {"batch": 4, "ids:0": 2})
    b = generate_inputs(SPECS_IN, {"batch": 4, "ids:0": 2})
    assert a.keys() == b.keys() == {"x", "ids", "mask"}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["x"].shape == (4, 3) and a["x"].dtype == np.float32
    assert a["ids"].shape == (2, 5) and a["ids"].dtype == np.int64
    assert a["ids"].min() >= 0 and a["ids"].max() < 10
    assert a["mask"].dtype == np.bool_ and a["mask"].shape == (2,)
    defaults = generate_inputs(SPECS_IN)
    assert defaults["x"].shape == (1, 3) and defaults["ids"].shape == (1, 5)
    other = generate_inputs(SPECS_IN, {"batch": 4, "ids:0": 2}, seed=1)
    assert not np.array_equal(other["x"], a["x"])


def _arrays(batch=1):
    inputs = generate_inputs(SPECS_IN, {"batch": batch})
    outputs = {
        "y": np.ones((batch, 2), np.float32),
        "label": np.arange(batch, dtype=np.int64),
    }
    return inputs, outputs


def test_write_read_round_trip(tmp_path, crafted):
    inputs, outputs = _arrays(batch=3)
    path = write_golden(tmp_path / "g.npz", SPECS_IN, SPECS_OUT, inputs, outputs)
    with np.load(path, allow_pickle=False) as raw:
        assert sorted(raw.files) == ["in_0", "in_1", "in_2", "out_0", "out_1"]
    manifest = _manifest(crafted, count=3)
    for source in (path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes())):
        gs = read_golden(source, manifest)
        for k in inputs:
            np.testing.assert_array_equal(gs.inputs[k], inputs[k])
        for k in outputs:
            np.testing.assert_array_equal(gs.outputs[k], outputs[k])


def test_golden_bytes_deterministic():
    inputs, outputs = _arrays()
    assert golden_bytes(SPECS_IN, SPECS_OUT, inputs, outputs) == golden_bytes(
        SPECS_IN, SPECS_OUT, inputs, outputs
    )


def test_read_golden_refusals(crafted):
    manifest = _manifest(crafted)
    inputs, outputs = _arrays()
    good = {f"in_{i}": inputs[s.name] for i, s in enumerate(SPECS_IN)}
    good |= {f"out_{j}": outputs[s.name] for j, s in enumerate(SPECS_OUT)}

    def npz(**arrays):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    with pytest.raises(GoldenError, match="lacks"):
        read_golden(npz(**{k: v for k, v in good.items() if k != "out_1"}), manifest)
    with pytest.raises(GoldenError, match="unexpected"):
        read_golden(npz(**good, extra=np.zeros(1)), manifest)
    with pytest.raises(GoldenError, match="dtype"):
        read_golden(npz(**{**good, "out_1": good["out_1"].astype(np.int32)}), manifest)
    with pytest.raises(GoldenError, match="shape"):
        read_golden(npz(**{**good, "in_0": np.zeros((1, 4), np.float32)}), manifest)
    with pytest.raises(GoldenError):
        read_golden(npz(**{**good, "in_0": np.array([object()], dtype=object)}), manifest)
    with pytest.raises(GoldenError):
        read_golden(b"not an npz", manifest)


def test_compare_pass_and_tolerance():
    tol = Tolerance(atol=1e-3, rtol=1e-2)
    exp = {"y": np.array([[1.0, -2.0]], np.float32), "label": np.array([1], np.int64)}
    act = {"y": np.array([[1.0 + 0.005, -2.0 - 0.02]], np.float32), "label": np.array([1])}
    result = compare_outputs(act, exp, tol)
    assert result.passed, result.detail
    assert result.max_abs_error == pytest.approx(0.02, rel=1e-3)
    assert result.worst_output == "y"

    act["y"] = np.array([[1.0, -2.05]], np.float32)
    result = compare_outputs(act, exp, tol)
    assert not result.passed and result.worst_output == "y"
    assert "y:" in result.detail


def test_compare_integers_exact():
    exp = {"label": np.array([1, 2, 3], np.int64)}
    result = compare_outputs({"label": np.array([1, 2, 4])}, exp, Tolerance(atol=10, rtol=10))
    assert not result.passed and result.worst_output == "label"
    assert "exact" in result.detail


def test_compare_shape_and_missing():
    exp = {"y": np.zeros((2, 2), np.float32), "z": np.zeros(1, np.float32)}
    result = compare_outputs({"y": np.zeros((1, 2), np.float32)}, exp, Tolerance())
    assert not result.passed
    assert result.worst_output == "y"
    assert "shape" in result.detail and "z: missing" in result.detail


def test_compare_nan():
    exp = {"y": np.array([np.nan, 1.0])}
    assert compare_outputs({"y": np.array([np.nan, 1.0])}, exp, Tolerance()).passed
    assert not compare_outputs({"y": np.array([0.0, 1.0])}, exp, Tolerance()).passed
    assert not compare_outputs(
        {"y": np.array([np.nan, 1.0])}, {"y": np.array([0.0, 1.0])}, Tolerance()
    ).passed
