"""The local API over real HTTP: JSON and npz, 400s, 413, 503, 408 and idle timeouts."""

from __future__ import annotations

import io
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("model_bundles.verify", reason="model_bundles.verify not written yet")
pytest.importorskip("model_bundles.golden", reason="model_bundles.golden not written yet")

from device_agent.config import AgentConfig
from device_agent.errors import ConfigError
from device_agent.local_api import LocalApi
from device_agent.runtime import ModelRuntime
from device_agent.telemetry import TelemetryRecorder


@pytest.fixture
def served(
    sample_onnx: Path, make_slot: Callable[..., Path], tmp_path: Path
) -> Iterator[tuple[str, TelemetryRecorder, Path]]:
    rt = ModelRuntime.load(make_slot(sample_onnx), ["cpu"])
    rec = TelemetryRecorder()
    with LocalApi(lambda: rt, rec, port=0, state_dir=tmp_path / "state",
                  max_body=64 * 1024) as api:
        yield api.url, rec, tmp_path / "state"


def test_json_predict_returns_outputs_bundle_and_delegate(
    served: tuple[str, TelemetryRecorder, Path],
) -> None:
    url, rec, state = served
    r = httpx.post(f"{url}/v1/predict", json={"inputs": {"features": [[0.1] * 16]}})
    assert r.status_code == 200
    body = r.json()
    assert body["bundle"] == "sample@1.0.0"
    assert body["delegate"] == "onnxruntime:CPUExecutionProvider"
    assert len(body["outputs"]["scores"][0]) == 4
    assert isinstance(body["outputs"]["label"][0], int)
    assert rec.total_inferences == 1
    assert (state / "api.json").exists()


def test_npz_predict_answers_npz_with_headers(
    served: tuple[str, TelemetryRecorder, Path],
) -> None:
    url, _, _ = served
    buf = io.BytesIO()
    np.savez(buf, features=np.ones((3, 16), np.float32))
    r = httpx.post(f"{url}/v1/predict", content=buf.getvalue(),
                   headers={"Content-Type": "application/x-npz"})
    assert r.status_code == 200
    assert r.headers["X-Edgefleet-Bundle"] == "sample@1.0.0"
    assert r.headers["X-Edgefleet-Delegate"] == "onnxruntime:CPUExecutionProvider"
    out = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert out["scores"].shape == (3, 4)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"x": 1}', '{"inputs"'),
        (b'{"inputs": {"features": [1, 2]}}', "expected rank 2"),
        (b'{"inputs": {"nope": [[1]]}}', "unknown input 'nope'"),
    ],
)
def test_bad_requests_get_400_with_a_precise_error(
    served: tuple[str, TelemetryRecorder, Path], body: bytes, message: str
) -> None:
    url, rec, _ = served
    r = httpx.post(f"{url}/v1/predict", content=body,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert message in r.json()["error"]
    assert rec.total_errors == 1 and rec.total_inferences == 0


def test_body_over_the_cap_gets_413(served: tuple[str, TelemetryRecorder, Path]) -> None:
    url, _, _ = served
    r = httpx.post(f"{url}/v1/predict", content=b"x" * (64 * 1024 + 1))
    assert r.status_code == 413


def test_model_endpoint_describes_inputs_and_outputs(
    served: tuple[str, TelemetryRecorder, Path],
) -> None:
    url, _, _ = served
    spec = httpx.get(f"{url}/v1/model").json()
    assert spec["inputs"] == [{"name": "features", "dtype": "float32", "shape": ["N", 16]}]
    assert [o["name"] for o in spec["outputs"]] == ["scores", "label"]
    assert httpx.get(f"{url}/v1/health").json()["model"] == "sample@1.0.0"


def test_no_active_model_answers_503() -> None:
    with LocalApi(lambda: None, TelemetryRecorder(), port=0) as api:
        r = httpx.post(f"{api.url}/v1/predict", json={"inputs": {"features": [[0.0] * 16]}})
        assert r.status_code == 503
        assert r.json()["error"] == "no model is active"
        assert httpx.get(f"{api.url}/v1/model").status_code == 503
        assert httpx.get(f"{api.url}/v1/health").json() == {
            "status": "ok", "model": None, "delegate": None}


def _raw(url: str, request: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=30)
    s.sendall(request)
    return s


def _read_until_closed(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):  # the socket's 30 s timeout is only a safety net
        data += chunk
    return data


def test_body_that_never_arrives_gets_408_and_the_connection_closes(
    sample_onnx: Path, make_slot: Callable[..., Path],
) -> None:
    rt = ModelRuntime.load(make_slot(sample_onnx), ["cpu"])
    rec = TelemetryRecorder()
    with LocalApi(lambda: rt, rec, port=0, read_timeout_s=0.5) as api:
        s = _raw(api.url, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
        answer = _read_until_closed(s)
        s.close()
        assert answer.startswith(b"HTTP/1.1 408")
        assert answer.endswith(b'{"error": "request body not received within 0.5 s"}')
        assert rec.total_inferences == 0
        r = httpx.post(f"{api.url}/v1/predict", json={"inputs": {"features": [[0.1] * 16]}})
        assert r.status_code == 200


def test_idle_keep_alive_connection_is_closed_after_the_read_timeout(
    sample_onnx: Path, make_slot: Callable[..., Path],
) -> None:
    rt = ModelRuntime.load(make_slot(sample_onnx), ["cpu"])
    with LocalApi(lambda: rt, TelemetryRecorder(), port=0, read_timeout_s=0.5) as api:
        s = _raw(api.url, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _read_until_closed(s)  # answered, then closed once idle
        s.close()
        assert answer.startswith(b"HTTP/1.1 200") and b'"status": "ok"' in answer


@pytest.mark.parametrize(("key", "value"), [("api_max_input_bytes", 0),
                                            ("api_max_connections", 0),
                                            ("api_read_timeout_s", 0.0)])
def test_config_refuses_local_api_limits_that_are_not_positive(key: str, value: float) -> None:
    base = {"device_id": "d1", "server_url": "http://s", "mqtt_url": "mqtt://h",
            "mqtt_username": "d1", "mqtt_password": "p",
            "fleet_public_key": "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n"}
    assert AgentConfig.from_dict(base).api_max_connections == 32
    with pytest.raises(ConfigError, match=key):
        AgentConfig.from_dict({**base, key: value})
