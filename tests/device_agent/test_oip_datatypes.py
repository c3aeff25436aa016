"""OIP datatypes onto a model whose inputs are BOOL, INT8 and FP16 (not only FP32): each
is fed exactly, JSON and binary, answers carry the model's own datatypes, and a value the
input cannot hold is refused. Served by a real ``LocalApi`` over HTTP, model run by ONNX
Runtime; expected outputs come from ``InferenceSession.run`` on the same inputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from device_agent.errors import PredictError
from device_agent.local_api import LocalApi
from device_agent.runtime import ModelRuntime
from device_agent.telemetry import TelemetryRecorder
from model_bundles.manifest import Manifest

INFER = "/v2/models/mixed/infer"
HEADER = "Inference-Header-Content-Length"


def mixed_model(path: Path) -> Path:
    """y = where(mask, float16(count), x); flag = not(mask)."""
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Cast", ["count"], ["c16"], to=TensorProto.FLOAT16),
         helper.make_node("Where", ["mask", "c16", "x"], ["y"]),
         helper.make_node("Not", ["mask"], ["flag"])], "mixed",
        [vi("mask", TensorProto.BOOL, ["N", 4]), vi("count", TensorProto.INT8, ["N", 4]),
         vi("x", TensorProto.FLOAT16, ["N", 4])],
        [vi("y", TensorProto.FLOAT16, ["N", 4]), vi("flag", TensorProto.BOOL, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def mixed_slot(slot: Path) -> Path:
    (slot / "files").mkdir(parents=True)
    model = mixed_model(slot / "files" / "model.onnx")
    data = model.read_bytes()

    def t(name: str, dtype: str) -> dict[str, Any]:
        return {"name": name, "dtype": dtype, "shape": ["N", 4]}

    manifest = Manifest.from_dict({
        "format_version": 1, "name": "mixed", "version": "2.1.0",
        "created_at": "2026-12-04T05:00:00Z", "task": "generic",
        "inputs": [t("mask", "bool"), t("count", "int8"), t("x", "float16")],
        "outputs": [t("y", "float16"), t("flag", "bool")],
        "files": [{"path": "model.onnx", "sha256": hashlib.sha256(data).hexdigest(),
                   "size": len(data)}],
        "variants": [{"id": "onnx-fp16", "file": "model.onnx", "format": "onnx",
                      "precision": "fp16", "delegates": ["cpu"],
                      "tolerance": {"atol": 0.0, "rtol": 0.0}}],
        "golden": None, "latency_budget_ms": None, "publisher_key_id": "0" * 64,
    })
    (slot / "manifest.json").write_bytes(manifest.to_bytes())
    return slot


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TelemetryRecorder]]:
    rt = ModelRuntime.load(mixed_slot(tmp_path_factory.mktemp("mixed") / "slot"), ["cpu"])
    rec = TelemetryRecorder()
    with LocalApi(lambda: rt, rec, port=0) as api:
        yield api.url, rec
    rt.close()


MASK = np.array([[True, False, True, False], [False, False, True, True]])
COUNT = np.array([[1, -2, 3, 127], [-128, 0, 5, 6]], np.int8)
X = np.array([[0.5, 1.5, -2.0, 3.25], [65504, -0.0, 1e-3, 7]], np.float16)


def expected(model_dir: Path) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(model_dir), providers=["CPUExecutionProvider"])
    return sess.run(["y", "flag"], {"mask": MASK, "count": COUNT, "x": X})


def test_bool_int8_and_fp16_inputs_are_fed_exactly_in_json_and_binary(
    served: tuple[str, TelemetryRecorder], tmp_path: Path,
) -> None:
    url, rec = served
    want_y, want_flag = expected(mixed_model(tmp_path / "m.onnx"))
    meta = httpx.get(f"{url}/v2/models/mixed/versions/2.1.0").json()
    assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [
        ("mask", "BOOL"), ("count", "INT8"), ("x", "FP16")]
    tensors = [("mask", "BOOL", MASK), ("count", "INT8", COUNT), ("x", "FP16", X)]
    json_req = {"inputs": [{"name": n, "shape": [2, 4], "datatype": d, "data": a.tolist()}
                           for n, d, a in tensors]}
    r = httpx.post(url + INFER, json=json_req)
    assert r.status_code == 200, r.text
    outs = {o["name"]: o for o in r.json()["outputs"]}
    assert (outs["y"]["datatype"], outs["flag"]["datatype"]) == ("FP16", "BOOL")
    np.testing.assert_array_equal(np.array(outs["y"]["data"], np.float16).reshape(2, 4), want_y)
    assert outs["flag"]["data"] == want_flag.ravel().tolist()

    head = json.dumps({"inputs": [{"name": n, "shape": [2, 4], "datatype": d,
                                   "parameters": {"binary_data_size": a.nbytes}}
                                  for n, d, a in tensors],
                       "parameters": {"binary_data_output": True}}).encode()
    r = httpx.post(url + INFER, content=head + b"".join(a.tobytes() for _, _, a in tensors),
                   headers={HEADER: str(len(head))})
    assert r.status_code == 200, r.text
    n = int(r.headers[HEADER])
    y = np.frombuffer(r.content[n:n + 16], np.float16).reshape(2, 4)
    flag = np.frombuffer(r.content[n + 16:], np.uint8).reshape(2, 4)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(flag, want_flag.astype(np.uint8))
    assert rec.total_inferences == 2 and rec.total_errors == 0


@pytest.mark.parametrize(("name", "datatype", "data", "message"), [
    ("mask", "BOOL", [[2, 0, 1, 0]] * 2, "has values other than 0 and 1"),
    ("mask", "FP32", [[0.5, 0, 1, 0]] * 2, "cannot convert to bool: has non-integer values"),
    ("count", "INT16", [[200, 0, 1, 0]] * 2, "has values outside the int8 range"),
    ("count", "BOOL", [[True, False, True, False]] * 2, "has booleans; a int8 input"),
    ("x", "FP32", [[1e5, 0, 1, 0]] * 2, "outside the float16 range"),
    ("x", "FP64", [[float("inf"), 0, 1, 0]] * 2, "has NaN or infinite values"),
])
def test_a_value_the_input_cannot_hold_is_refused_whatever_the_datatype(
    served: tuple[str, TelemetryRecorder], name: str, datatype: str, data: Any, message: str,
) -> None:
    url, rec = served
    before = (rec.total_inferences, rec.total_errors)
    good = {"mask": ("BOOL", MASK.tolist()), "count": ("INT8", COUNT.tolist()),
            "x": ("FP16", X.tolist())}
    good[name] = (datatype, data)
    body = {"inputs": [{"name": n, "shape": [2, 4], "datatype": d, "data": v}
                       for n, (d, v) in good.items()]}
    r = httpx.post(url + INFER, content=json.dumps(body),
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert f"input {name!r}" in r.json()["error"] and message in r.json()["error"]
    assert (rec.total_inferences, rec.total_errors) == (before[0], before[1] + 1)


def test_in_process_arrays_of_every_dtype_take_the_fast_path_only_when_exact(
        tmp_path: Path) -> None:
    """``predict``'s inlined fast path (an array of the declared dtype, C order) still
    refuses a float16 inf and feeds a Fortran-order array the same as its C-order copy."""
    rt = ModelRuntime.load(mixed_slot(tmp_path / "slot"), ["cpu"])
    try:
        want = expected(tmp_path / "slot" / "files" / "model.onnx")
        wide = np.zeros((2, 8), np.float16)
        wide[:, ::2] = X
        strided = wide[:, ::2]  # a view, not C-contiguous
        assert not strided.flags.c_contiguous
        got = rt.predict({"mask": MASK, "count": np.asfortranarray(COUNT), "x": strided})
        np.testing.assert_array_equal(got.outputs["y"], want[0])
        bad = X.copy()
        bad[1, 2] = np.inf
        with pytest.raises(PredictError, match="input 'x'.*NaN or infinite"):
            rt.predict({"mask": MASK, "count": COUNT, "x": bad})
        with pytest.raises(PredictError, match="input 'count'.*int8"):
            rt.predict({"mask": MASK, "count": COUNT.astype(np.int16) * 300, "x": X})
    finally:
        rt.close()
