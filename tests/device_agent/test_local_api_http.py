"""The local API over real HTTP: JSON and npz, 400s, 413 and 503."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("model_bundles.verify", reason="model_bundles.verify not written yet")
pytest.importorskip("model_bundles.golden", reason="model_bundles.golden not written yet")

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
