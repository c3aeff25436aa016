"""Triton's own HTTP client (``tritonclient[http]``, unmodified) against a real agent
process serving the sample bundle over the Open Inference Protocol.

Outputs are compared with ONNX Runtime's own ``InferenceSession.run`` on the same inputs:
integer outputs exactly, float outputs within the bundle variant's tolerance.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("model_bundles.golden", reason="model_bundles.golden not written yet")
httpclient = pytest.importorskip("tritonclient.http", reason="pip install 'tritonclient[http]'")
from tritonclient.utils import InferenceServerException  # noqa: E402

from bench.agent_process import AgentProcess, agent_dir_serving  # noqa: E402
from tests.device_agent.conftest import write_slot  # noqa: E402

ATOL, RTOL = 1e-4, 1e-3  # the sample slot's variant tolerance (write_slot)


@pytest.fixture(scope="module")
def agent(sample_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    root = tmp_path_factory.mktemp("oip-agent")
    write_slot(root / "slot", sample_onnx)
    with AgentProcess(agent_dir_serving(root / "agent", root / "slot")) as a:
        yield a
        assert a.alive(), a.log.read_text()


@pytest.fixture(scope="module")
def client(agent: AgentProcess) -> Iterator[object]:
    c = httpclient.InferenceServerClient(agent.url.removeprefix("http://"))
    yield c
    c.close()


@pytest.fixture(scope="module")
def reference(sample_onnx: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(sample_onnx), providers=["CPUExecutionProvider"])


def test_triton_client_sees_a_live_ready_server_serving_the_bundle(client: object) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("sample")
    assert client.is_model_ready("sample", "1.0.0")
    assert not client.is_model_ready("sample", "2.0.0")
    assert not client.is_model_ready("other")
    meta = client.get_server_metadata()
    assert meta["name"] == "edgefleet-device-agent"
    assert "binary_tensor_data" in meta["extensions"]


def test_triton_client_reads_the_model_metadata_with_oip_datatypes(client: object) -> None:
    meta = client.get_model_metadata("sample")
    assert meta == {
        "name": "sample", "versions": ["1.0.0"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 16]}],
        "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 4]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]}],
    }
    assert client.get_model_metadata("sample", "1.0.0") == meta


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_triton_infer_matches_onnxruntime_session_run(
    client: object, reference: ort.InferenceSession, binary_in: bool, binary_out: bool,
) -> None:
    x = np.random.default_rng(5).standard_normal((3, 16)).astype(np.float32)
    inp = httpclient.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    outs = [httpclient.InferRequestedOutput("scores", binary_data=binary_out),
            httpclient.InferRequestedOutput("label", binary_data=binary_out)]
    result = client.infer("sample", [inp], outputs=outs, request_id="req-7")
    want_scores, want_label = reference.run(["scores", "label"], {"features": x})
    np.testing.assert_allclose(result.as_numpy("scores"), want_scores, atol=ATOL, rtol=RTOL)
    np.testing.assert_array_equal(result.as_numpy("label"), want_label)
    assert result.as_numpy("label").dtype == np.int64
    response = result.get_response()
    assert response["id"] == "req-7"
    assert (response["model_name"], response["model_version"]) == ("sample", "1.0.0")
    sent_binary = ["parameters" in o for o in response["outputs"]]
    assert sent_binary == [binary_out, binary_out]


def test_triton_infer_without_requested_outputs_answers_all_of_them_in_binary(
    client: object, reference: ort.InferenceSession,
) -> None:
    x = np.linspace(-2, 2, 32, dtype=np.float32).reshape(2, 16)
    inp = httpclient.InferInput("features", [2, 16], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("sample", [inp], model_version="1.0.0")
    want_scores, want_label = reference.run(["scores", "label"], {"features": x})
    assert [o["name"] for o in result.get_response()["outputs"]] == ["scores", "label"]
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    np.testing.assert_allclose(result.as_numpy("scores"), want_scores, atol=ATOL, rtol=RTOL)
    np.testing.assert_array_equal(result.as_numpy("label"), want_label)


def test_triton_infer_answers_only_the_requested_output(client: object) -> None:
    inp = httpclient.InferInput("features", [1, 16], "FP32")
    inp.set_data_from_numpy(np.ones((1, 16), np.float32))
    result = client.infer("sample", [inp], outputs=[httpclient.InferRequestedOutput("label")])
    assert result.as_numpy("scores") is None
    assert result.as_numpy("label").shape == (1,)


def test_triton_infer_of_an_unknown_model_or_version_is_refused_with_404(
    client: object, agent: AgentProcess,
) -> None:
    inp = httpclient.InferInput("features", [1, 16], "FP32")
    inp.set_data_from_numpy(np.ones((1, 16), np.float32))
    with pytest.raises(InferenceServerException, match="unknown model 'other'") as e:
        client.infer("other", [inp])
    assert e.value.status() == "404"
    with pytest.raises(InferenceServerException, match="no version '9'") as e:
        client.infer("sample", [inp], model_version="9")
    assert e.value.status() == "404"
    assert httpx.get(f"{agent.url}/v1/health").json()["model"] == "sample@1.0.0"


def test_triton_infer_of_nan_is_refused_and_the_agent_still_serves(
    client: object, agent: AgentProcess,
) -> None:
    x = np.ones((1, 16), np.float32)
    x[0, 3] = np.nan
    inp = httpclient.InferInput("features", [1, 16], "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    with pytest.raises(InferenceServerException, match="has NaN or infinite values") as e:
        client.infer("sample", [inp])
    assert e.value.status() == "400"
    inp.set_data_from_numpy(np.zeros((1, 16), np.float32))
    assert client.infer("sample", [inp]).as_numpy("label").shape == (1,)
