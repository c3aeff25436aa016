"""The KServe v2 REST protocol, spoken with plain httpx against a real agent process: every
OIP datatype mapped exactly onto the model's input, JSON and binary bodies, and each bad
request refused with its status and a precise ``{"error"}`` while the agent keeps serving
the same model.

(KServe's own ``InferenceRESTClient`` is not used: the ``kserve`` package requires
kubernetes, grpcio, grpcio-tools, pandas, fastapi and uvicorn among ~30 dependencies.)
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("model_bundles.golden", reason="model_bundles.golden not written yet")

from bench.agent_process import AgentProcess, agent_dir_serving  # noqa: E402
from device_agent.local_api import LocalApi  # noqa: E402
from device_agent.telemetry import TelemetryRecorder  # noqa: E402
from tests.device_agent.conftest import write_slot  # noqa: E402

MAX_INPUT_BYTES = 4096
READ_TIMEOUT_S = 2.0
INFER = "/v2/models/sample/infer"
HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def agent(sample_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    root = tmp_path_factory.mktemp("oip-rest")
    write_slot(root / "slot", sample_onnx)
    agent_dir = agent_dir_serving(root / "agent", root / "slot",
                                  api_max_input_bytes=MAX_INPUT_BYTES,
                                  api_read_timeout_s=READ_TIMEOUT_S)
    with AgentProcess(agent_dir) as a:
        yield a
        assert a.alive(), a.log.read_text()


@pytest.fixture(scope="module")
def reference(sample_onnx: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(sample_onnx), providers=["CPUExecutionProvider"])


def infer(agent: AgentProcess, body: dict[str, Any], path: str = INFER) -> httpx.Response:
    return httpx.post(agent.url + path, content=json.dumps(body), timeout=30,  # NaN allowed
                      headers={"Content-Type": "application/json"})


def binary_infer(agent: AgentProcess, header: dict[str, Any], data: bytes,
                 header_length: int | None = None) -> httpx.Response:
    head = json.dumps(header).encode()
    n = len(head) if header_length is None else header_length
    return httpx.post(agent.url + INFER, content=head + data, timeout=30,
                      headers={HEADER: str(n), "Content-Type": "application/octet-stream"})


def tensor(data: Any, shape: list[int], datatype: str = "FP32", **kw: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "features", "shape": shape, "datatype": datatype,
                        "data": data}], **kw}


def assert_still_serves(agent: AgentProcess) -> None:
    r = infer(agent, tensor([0.5] * 16, [1, 16]))
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == "1.0.0"
    assert httpx.get(f"{agent.url}/v1/health").json()["model"] == "sample@1.0.0"


# -- health and metadata ---------------------------------------------------------------


def test_health_server_and_model_metadata_follow_the_v2_spec(agent: AgentProcess) -> None:
    get = lambda p: httpx.get(agent.url + p)  # noqa: E731
    assert (get("/v2/health/live").status_code, get("/v2/health/live").json()) == (
        200, {"live": True})
    assert get("/v2/health/ready").json() == {"ready": True}
    assert get("/v2").json()["extensions"] == ["binary_tensor_data"]
    meta = get("/v2/models/sample/versions/1.0.0").json()
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 16]}]
    assert get("/v2/models/sample/ready").json() == {"name": "sample", "ready": True}
    for path, message in [("/v2/models/nope", "unknown model 'nope'"),
                          ("/v2/models/nope/ready", "unknown model 'nope'"),
                          ("/v2/models/sample/versions/2.0.0", "no version '2.0.0'"),
                          ("/v2/models/sample/versions/2.0.0/ready", "no version '2.0.0'")]:
        r = get(path)
        assert r.status_code == 404 and message in r.json()["error"], path
    assert get("/v2/models/sample/extra").status_code == 404


def test_no_active_model_answers_503_on_readiness_metadata_and_infer() -> None:
    with LocalApi(lambda: None, TelemetryRecorder(), port=0) as api:
        assert httpx.get(f"{api.url}/v2/health/live").status_code == 200
        r = httpx.get(f"{api.url}/v2/health/ready")
        assert (r.status_code, r.json()) == (503, {"ready": False})
        assert httpx.get(f"{api.url}/v2/models/sample").status_code == 503
        assert httpx.get(f"{api.url}/v2/models/sample/ready").status_code == 503
        r = httpx.post(f"{api.url}{INFER}", json=tensor([0.0] * 16, [1, 16]))
        assert (r.status_code, r.json()) == (503, {"error": "no model is active"})


# -- datatypes -------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", ["FP32", "FP16", "FP64", "INT8", "INT16", "INT32",
                                      "INT64", "UINT8", "UINT16", "UINT32", "UINT64"])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_every_numeric_datatype_feeds_the_fp32_input_exactly(
    agent: AgentProcess, reference: ort.InferenceSession, datatype: str, binary: bool,
) -> None:
    from device_agent.oip import DATATYPES

    values = np.arange(32).reshape(2, 16) % 7  # exact in every datatype
    sent = values.astype(DATATYPES[datatype])
    if binary:
        r = binary_infer(agent, {"inputs": [{"name": "features", "shape": [2, 16],
                                             "datatype": datatype,
                                             "parameters": {"binary_data_size": sent.nbytes}}],
                                 "outputs": [{"name": "label"}]}, sent.tobytes())
    else:
        r = infer(agent, tensor(sent.tolist(), [2, 16], datatype, outputs=[{"name": "label"}]))
    assert r.status_code == 200, r.text
    want = reference.run(["label"], {"features": values.astype(np.float32)})[0]
    assert r.json()["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [2],
                                    "data": want.tolist()}]


def test_flat_and_nested_json_data_give_the_same_answer(agent: AgentProcess) -> None:
    x = (np.arange(32, dtype=np.float32).reshape(2, 16) - 16) / 8
    flat = infer(agent, tensor(x.ravel().tolist(), [2, 16]))
    nested = infer(agent, tensor(x.tolist(), [2, 16]))
    assert flat.status_code == nested.status_code == 200
    assert flat.json() == nested.json()


def test_binary_outputs_follow_the_json_header_in_order(
    agent: AgentProcess, reference: ort.InferenceSession,
) -> None:
    x = np.linspace(-1, 1, 48, dtype=np.float32).reshape(3, 16)
    r = binary_infer(agent, {"id": "b1", "inputs": [
        {"name": "features", "shape": [3, 16], "datatype": "FP32",
         "parameters": {"binary_data_size": x.nbytes}}],
        "parameters": {"binary_data_output": True}}, x.tobytes())
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/octet-stream"
    n = int(r.headers[HEADER])
    head = json.loads(r.content[:n])
    assert head["id"] == "b1"
    sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
    assert sizes == [3 * 4 * 4, 3 * 8] and n + sum(sizes) == len(r.content)
    scores = np.frombuffer(r.content[n:n + sizes[0]], np.float32).reshape(3, 4)
    label = np.frombuffer(r.content[n + sizes[0]:], np.int64)
    want_scores, want_label = reference.run(["scores", "label"], {"features": x})
    np.testing.assert_allclose(scores, want_scores, atol=1e-4, rtol=1e-3)
    np.testing.assert_array_equal(label, want_label)


# -- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "message"), [
    (tensor([1.0] * 15 + [float("nan")], [1, 16]), "has NaN or infinite values"),
    (tensor([True] * 16, [1, 16], "BOOL"), "has booleans; a float32 input takes numbers"),
    (tensor([1.5] * 16, [1, 16], "INT32"), "cannot convert to int32: has non-integer values"),
    (tensor([300] * 16, [1, 16], "INT8"), "has values outside the int8 range"),
    (tensor([-1] * 16, [1, 16], "UINT8"), "has values outside the uint8 range"),
    (tensor([70000.0] * 16, [1, 16], "FP16"), "outside the float16 range"),
    (tensor(["1"] * 16, [1, 16], "BYTES"), "datatype BYTES (strings) is refused"),
    (tensor([1.0] * 16, [1, 16], "BF16"), "unsupported datatype 'BF16'"),
    (tensor([1.0] * 16, [2, 16]), "data has 16 elements, shape [2, 16] takes 32"),
    (tensor([1.0] * 16, [16]), "expected rank 2"),
    (tensor([1.0] * 16, [1, -16]), "input 'features': shape[1] must be >= 0, got -16"),
    (tensor(1.0, [1, 16]), "input 'features': data must be a list, got float"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]},
     "unknown input 'x'"),
    ({"inputs": []}, "inputs must not be empty"),
    (tensor([1.0] * 16, [1, 16], outputs=[{"name": "probs"}]), "unknown output 'probs'"),
    (tensor([1.0] * 16, [1, 16], id=7), "id must be a string"),
    (tensor([1.0] * 16, [1, 16], parameters={"binary_data_output": "yes"}),
     "parameters.binary_data_output must be a boolean, got str"),
])
def test_bad_infer_request_is_refused_with_400_and_changes_nothing(
    agent: AgentProcess, body: dict[str, Any], message: str,
) -> None:
    r = infer(agent, body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]
    assert_still_serves(agent)


@pytest.mark.parametrize(("size", "data", "header_length", "message"), [
    (64, b"\0" * 60, None, "runs past the 60 bytes of binary data"),
    (60, b"\0" * 60, None, "binary_data_size is 60 bytes; shape [1, 16] of float32 takes 64"),
    (64, b"\0" * 68, None, "4 bytes of binary data are not claimed"),
    (64, b"\0" * 64, 10**6, "Inference-Header-Content-Length is 1000000"),
    (64, np.full(16, np.inf, np.float32).tobytes(), None, "has NaN or infinite values"),
])
def test_bad_binary_request_is_refused_with_400_and_changes_nothing(
    agent: AgentProcess, size: int, data: bytes, header_length: int | None, message: str,
) -> None:
    header = {"inputs": [{"name": "features", "shape": [1, 16], "datatype": "FP32",
                          "parameters": {"binary_data_size": size}}]}
    r = binary_infer(agent, header, data, header_length)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]
    assert_still_serves(agent)


def test_binary_bool_bytes_other_than_0_and_1_are_refused(agent: AgentProcess) -> None:
    header = {"inputs": [{"name": "features", "shape": [1, 16], "datatype": "BOOL",
                          "parameters": {"binary_data_size": 16}}]}
    r = binary_infer(agent, header, b"\x02" * 16)
    assert r.status_code == 400 and "BOOL data has bytes other than 0 and 1" in r.text
    assert_still_serves(agent)


def test_binary_tensor_over_the_input_bound_gets_413(agent: AgentProcess) -> None:
    rows = MAX_INPUT_BYTES // 64 + 1
    x = np.zeros((rows, 16), np.float32)
    header = {"inputs": [{"name": "features", "shape": [rows, 16], "datatype": "FP32",
                          "parameters": {"binary_data_size": x.nbytes}}]}
    r = binary_infer(agent, header, x.tobytes())
    assert r.status_code == 413
    assert f"over the {MAX_INPUT_BYTES}-byte limit for this input" in r.json()["error"]
    assert_still_serves(agent)


def test_body_over_the_cap_gets_413_before_it_is_read(agent: AgentProcess) -> None:
    answer = raw_exchange(agent, f"POST {INFER} HTTP/1.1\r\nHost: x\r\n{HEADER}: 2\r\n"
                                 f"Content-Length: {16 * 1024 * 1024 + 1}\r\n\r\n{{}}")
    assert answer.startswith(b"HTTP/1.1 413")
    assert answer.endswith(b"over the 16777216-byte limit\"}")
    assert_still_serves(agent)


def test_compressed_body_is_refused(agent: AgentProcess) -> None:
    r = httpx.post(agent.url + INFER, content=b"\x1f\x8b", headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400 and "Content-Encoding 'gzip'" in r.json()["error"]


def test_binary_body_that_never_arrives_gets_408(agent: AgentProcess) -> None:
    answer = raw_exchange(agent, f"POST {INFER} HTTP/1.1\r\nHost: x\r\n{HEADER}: 10\r\n"
                                 "Content-Length: 400\r\n\r\n{}")
    assert answer.startswith(b"HTTP/1.1 408")
    assert_still_serves(agent)


def raw_exchange(agent: AgentProcess, request: str) -> bytes:
    """Send ``request`` as is; everything the agent answers until it closes."""
    host, port = agent.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(request.encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer
