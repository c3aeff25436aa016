"""KServe's own v2 REST client (``kserve.InferenceRESTClient``, unmodified) against a real
agent process serving the sample bundle: health, model readiness, JSON and binary infer,
outputs equal to ONNX Runtime's ``InferenceSession.run``, and a bad request refused with an
OIP error body.

The client runs in a virtual environment of its own (``tests/device_agent/kserve_probe.py``;
``scripts/test.sh`` makes it and exports ``EDGEFLEET_KSERVE_PYTHON``): KServe's SDK pins
``psutil<6`` where amqtt needs ``psutil>=7``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from bench.agent_process import AgentProcess, agent_dir_serving
from tests.device_agent.conftest import write_slot

PROBE = Path(__file__).with_name("kserve_probe.py")
ATOL, RTOL = 1e-4, 1e-3  # the sample slot's variant tolerance (write_slot)


@pytest.fixture(scope="module")
def kserve_python() -> str:
    python = os.environ.get("EDGEFLEET_KSERVE_PYTHON")
    if not python:
        pytest.skip("KServe's client lives in its own venv: run through scripts/test.sh "
                    "(it sets EDGEFLEET_KSERVE_PYTHON)")
    return python


@pytest.fixture(scope="module")
def probed(kserve_python: str, sample_onnx: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("kserve-agent")
    write_slot(root / "slot", sample_onnx)
    with AgentProcess(agent_dir_serving(root / "agent", root / "slot")) as agent:
        out = subprocess.run([kserve_python, str(PROBE), agent.url, "sample", "1.0.0"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        yield json.loads(out.stdout.strip().splitlines()[-1])
        assert agent.alive(), agent.log.read_text()


def test_kserve_client_sees_a_live_ready_server_and_model(probed: dict[str, Any]) -> None:
    assert (probed["live"], probed["ready"], probed["model_ready"]) == (True, True, True)
    assert probed["other_ready"] is False


@pytest.mark.parametrize("body", ["json", "binary"])
def test_kserve_infer_matches_onnxruntime_session_run(
    probed: dict[str, Any], sample_onnx: Path, body: str,
) -> None:
    x = np.asarray(probed["x"], dtype=np.float32)
    scores, label = ort.InferenceSession(str(sample_onnx), providers=["CPUExecutionProvider"]
                                         ).run(["scores", "label"], {"features": x})
    got = probed["infer"][body]
    # (KServe's InferResponse.from_bytes drops model_version; test_oip_rest reads it raw)
    assert (got["id"], got["model_name"]) == (f"kserve-{body == 'binary'}", "sample")
    assert got["outputs"]["scores"]["datatype"] == "FP32"
    assert got["outputs"]["scores"]["shape"] == [3, 4]
    np.testing.assert_allclose(np.asarray(got["outputs"]["scores"]["data"]), scores,
                               atol=ATOL, rtol=RTOL)
    assert got["outputs"]["label"]["datatype"] == "INT64"
    np.testing.assert_array_equal(np.asarray(got["outputs"]["label"]["data"]), label)


def test_a_bad_request_from_the_kserve_client_gets_an_oip_error(probed: dict[str, Any]) -> None:
    bad = probed["bad"]
    assert bad["status"] == 400
    assert "data has 15 elements, shape [1, 16] takes 16" in bad["body"]["error"]
