"""Predict takes every input by name with its dtype honoured: float32, int32, int64, a scalar,
several inputs and outputs, and names with characters the ONNX file allows but URLs and
Python identifiers do not. Built with the real builder, extracted and served over HTTP."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from device_agent.local_api import LocalApi
from device_agent.runtime import ModelRuntime
from device_agent.telemetry import TelemetryRecorder
from model_bundles.builder import build_bundle
from model_bundles.keys import generate_keypair, load_public_key
from model_bundles.verify import extract_verified

X, IDS, COUNT = "input:0/x y", "ids.int32", "count-64"
SUM, SHIFTED, SCALED = "sum out", "ids+1", "count×2"


def _mixed_model(path: Path) -> Path:
    nodes = [
        helper.make_node("ReduceSum", [X, "axes"], [SUM], keepdims=0),
        helper.make_node("Add", [IDS, "one32"], [SHIFTED]),
        helper.make_node("Mul", [COUNT, "two64"], [SCALED]),
    ]
    graph = helper.make_graph(
        nodes, "mixed",
        [helper.make_tensor_value_info(X, TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info(IDS, TensorProto.INT32, ["batch"]),
         helper.make_tensor_value_info(COUNT, TensorProto.INT64, [])],
        [helper.make_tensor_value_info(SUM, TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info(SHIFTED, TensorProto.INT32, ["batch"]),
         helper.make_tensor_value_info(SCALED, TensorProto.INT64, [])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
                     helper.make_tensor("one32", TensorProto.INT32, [], [1]),
                     helper.make_tensor("two64", TensorProto.INT64, [], [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    model = _mixed_model(tmp_path / "mixed.onnx")
    _, pub = generate_keypair(tmp_path / "keys")
    bundle = tmp_path / "mixed.efb"
    build_bundle([model], name="mixed", version="1.0.0", key_path=tmp_path / "keys" / "publisher.key",
                 out=bundle, dims={"batch": 2})
    slot = tmp_path / "slot"
    slot.mkdir()
    verified = extract_verified(bundle, slot / "files", [load_public_key(pub)])
    (slot / "manifest.json").write_bytes(verified.manifest_bytes)
    runtime = ModelRuntime.load(slot, ["cpu"])
    with LocalApi(lambda: runtime, TelemetryRecorder(), port=0, state_dir=tmp_path / "state") as api:
        yield api.url, model


def test_every_input_is_taken_by_name_and_cast_to_its_declared_dtype(served: tuple[str, Path]) -> None:
    url, model = served
    body = {"inputs": {X: [[1, 2, 3], [0.5, 0.25, 0.125]], IDS: [7, -1], COUNT: 21}}
    resp = httpx.post(f"{url}/v1/predict", json=body, timeout=10)
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert got["bundle"] == "mixed@1.0.0"
    ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = ref.run(None, {X: np.array(body["inputs"][X], np.float32),
                              IDS: np.array([7, -1], np.int32), COUNT: np.array(21, np.int64)})
    assert got["outputs"] == {SUM: expected[0].tolist(), SHIFTED: [8, 0], SCALED: 42}


def test_an_integer_input_given_a_fraction_is_refused_by_name(served: tuple[str, Path]) -> None:
    url, _ = served
    body = {"inputs": {X: [[1, 2, 3]], IDS: [1.5], COUNT: 1}}
    resp = httpx.post(f"{url}/v1/predict", json=body, timeout=10)
    assert resp.status_code == 400
    assert IDS in resp.json()["error"]
    ok = httpx.post(f"{url}/v1/predict", json={"inputs": {X: [[1, 2, 3]], IDS: [1], COUNT: 1}}, timeout=10)
    assert ok.status_code == 200


def test_an_integer_input_outside_its_dtype_range_is_refused(served: tuple[str, Path]) -> None:
    url, _ = served
    body = {"inputs": {X: [[1, 2, 3]], IDS: [2**40], COUNT: 1}}
    resp = httpx.post(f"{url}/v1/predict", json=body, timeout=10)
    assert resp.status_code == 400
    assert "int32 range" in resp.json()["error"]


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_npz_inputs_are_taken_by_name_also_with_slashes_and_spaces(
    served: tuple[str, Path],
) -> None:
    url, _ = served
    body = _npz(**{X: np.ones((2, 3), np.float32), IDS: np.array([4, 5], np.int64),
                   COUNT: np.array(3, np.int64)})
    resp = httpx.post(f"{url}/v1/predict", content=body,
                      headers={"Content-Type": "application/x-npz"}, timeout=10)
    assert resp.status_code == 200, resp.text
    out = np.load(io.BytesIO(resp.content), allow_pickle=False)
    assert out[SHIFTED].tolist() == [5, 6] and int(out[SCALED]) == 6


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({X: [[1, 2, 3]], IDS: [True], COUNT: 1},
         f"input {IDS!r}: cannot convert to int32: has booleans; a int32 input takes numbers"),
        ({X: [[1, 2, 3]], IDS: [1], COUNT: 2**70},
         f"input {COUNT!r}: cannot convert to int64: has values that are not numbers "
         "(or integers too large for int64)"),
        ({X: [[1, 2, 3]], IDS: [1], COUNT: None},
         f"input {COUNT!r}: cannot convert to int64: has values that are not numbers"),
    ],
    ids=["bool_for_int", "int_past_int64", "null"],
)
def test_json_values_an_integer_input_cannot_hold_are_refused_by_name(
    served: tuple[str, Path], inputs: dict[str, object], message: str,
) -> None:
    url, _ = served
    resp = httpx.post(f"{url}/v1/predict", json={"inputs": inputs}, timeout=10)
    assert resp.status_code == 400
    assert message in resp.json()["error"]
    ok = httpx.post(f"{url}/v1/predict", json={"inputs": {X: [[1, 2, 3]], IDS: [1], COUNT: 1}},
                    timeout=10)
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({IDS: np.array([2**40], np.int64)}, f"input {IDS!r}: cannot convert to int32: has "
                                             "values outside the int32 range"),
        ({IDS: np.array([1.5], np.float32)}, f"input {IDS!r}: cannot convert to int32: has "
                                             "non-integer values"),
        ({IDS: np.array([1 + 2j])}, f"input {IDS!r}: arrays of dtype complex128 are refused"),
        ({IDS: np.array(["1"])}, f"input {IDS!r}: arrays of dtype <U1 are refused"),
        ({"nope": np.array([1])}, "unknown input 'nope'"),
    ],
    ids=["int_out_of_range", "fraction_for_int", "complex", "strings", "unknown_name"],
)
def test_npz_arrays_an_input_cannot_take_are_refused_by_name(
    served: tuple[str, Path], arrays: dict[str, np.ndarray], message: str,
) -> None:
    url, _ = served
    full = {X: np.ones((1, 3), np.float32), IDS: np.array([1], np.int32),
            COUNT: np.array(1, np.int64)}
    bad = {**full, **arrays}
    if "nope" in arrays:  # in place of an input: the member count stays within the cap
        del bad[COUNT]
    resp = httpx.post(f"{url}/v1/predict", content=_npz(**bad),
                      headers={"Content-Type": "application/x-npz"}, timeout=10)
    assert resp.status_code == 400
    assert message in resp.json()["error"]
    ok = httpx.post(f"{url}/v1/predict", content=_npz(**full),
                    headers={"Content-Type": "application/x-npz"}, timeout=10)
    assert ok.status_code == 200


def test_npz_array_larger_than_a_fixed_shape_input_is_refused_from_its_header(
    served: tuple[str, Path],
) -> None:
    """COUNT is a scalar (shape []): its bound is 8 bytes, whatever the agent-wide cap."""
    url, _ = served
    body = _npz(**{X: np.ones((1, 3), np.float32), IDS: np.array([1], np.int32),
                   COUNT: np.zeros(1000, np.int64)})
    resp = httpx.post(f"{url}/v1/predict", content=body,
                      headers={"Content-Type": "application/x-npz"}, timeout=10)
    assert resp.status_code == 413
    assert (f"input {COUNT!r}: array of shape [1000] int64 is 8000 bytes, over the 8-byte "
            "limit for this input") in resp.json()["error"]
    ok = httpx.post(f"{url}/v1/predict", json={"inputs": {X: [[1, 2, 3]], IDS: [1], COUNT: 1}},
                    timeout=10)
    assert ok.status_code == 200
