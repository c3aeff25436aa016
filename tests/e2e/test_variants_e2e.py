"""Real processes: a bundle with ONNX fp32, ONNX int8 and TFLite variants, deployed with an
operator delegate override, served by the (variant, delegate) pair it names; an override to
an accelerator this machine lacks falls back, and the device and console say so."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from .harness import Fleet, run_cli, wait_for

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_tiny_tflite import reference  # noqa: E402
from tiny_twin import TFLITE, write_int8_twin, write_onnx_twin  # noqa: E402

pytestmark = pytest.mark.e2e
pytest.importorskip("ai_edge_litert.interpreter")


def _execution(fleet: Fleet, device_id: str) -> dict[str, Any] | None:
    r = httpx.get(f"{fleet.url}/api/v1/devices/{device_id}",
                  headers={"Authorization": f"Bearer {fleet.token}"}, timeout=10)
    r.raise_for_status()
    state = r.json().get("state") or {}
    return (state.get("active") or {}).get("execution")


def test_multi_format_bundle_served_by_override_pair_and_absent_cuda_falls_back(
    tmp_path: Path,
) -> None:
    fp32 = write_onnx_twin(tmp_path / "tiny.onnx")
    int8 = write_int8_twin(fp32, tmp_path / "tiny-int8.onnx")
    fleet = Fleet(tmp_path)
    try:
        keys = tmp_path / "keys"
        run_cli("model-bundle", "keygen", "--out", str(keys))
        bundle = tmp_path / "tiny-1.0.0.efb"
        run_cli("model-bundle", "build", str(fp32), str(int8), str(TFLITE), "--name", "tiny",
                "--version", "1.0.0", "--key", str(keys / "publisher.key"), "--out", str(bundle))
        fleet.cli("fleet-server", "publishers", "add", str(keys / "publisher.pub"))
        fleet.cli("model-bundle", "publish", str(bundle))
        device_id = "variants-1"
        _, _, api = fleet.start_agent(device_id)

        # The operator asks for LiteRT: the TFLite variant serves on it, proven by its ops.
        fleet.cli("fleet-server", "deploy", "tiny@1.0.0", "--device", device_id,
                  "--delegate", "litert")
        fleet.wait_active(device_id, "tiny@1.0.0")
        ex = wait_for(lambda: _execution(fleet, device_id), 30, "execution report", fleet.procs())
        assert (ex["variant"], ex["delegate"], ex["fallback"]) == (
            "tflite-fp32", "litert:xnnpack", False)
        assert ex["node_counts"]["xnnpack"] >= 1
        assert ex["choice"] == "operator override delegate=litert"
        x = np.random.default_rng(2).standard_normal((2, 16)).astype(np.float32)
        resp = httpx.post(f"http://127.0.0.1:{api['port']}/v1/predict",
                          json={"inputs": {"features": x.tolist()}}, timeout=10)
        assert resp.status_code == 200, resp.text
        assert resp.json()["delegate"] == "litert:xnnpack"
        np.testing.assert_allclose(np.asarray(resp.json()["outputs"]["scores"]), reference(x),
                                   atol=1e-5)

        # Same bundle, override to CUDA (absent here): re-selected, reported as not honoured.
        fleet.cli("fleet-server", "deploy", "tiny@1.0.0", "--device", device_id,
                  "--delegate", "cuda")
        ex = wait_for(lambda: (e := _execution(fleet, device_id))
                      and (e.get("override") or {}).get("requested") == "delegate=cuda" and e,
                      60, "execution with the cuda override", fleet.procs())
        assert ex["override"]["honoured"] is False
        assert "operator override delegate=cuda not honoured (cuda: skipped" in ex["choice"]
        assert ex["variant"] in {"onnx-fp32", "onnx-int8", "tflite-fp32"}

        # The console shows the fallback in the list and the reason on the device page.
        with httpx.Client(base_url=fleet.url, timeout=10) as web:
            assert web.post("/console/login", data={"token": fleet.token}).status_code in (
                200, 303)
            listing = web.get("/console/devices").text
            row = listing[listing.index(f'data-device-id="{device_id}"'):]
            row = row[:row.index("</tr>")]
            assert "FALLBACK" in row and "fallback-marker" in row
            page = web.get(f"/console/devices/{device_id}").text
            assert 'id="device-fallback-reason"' in page and "not honoured (cuda: skipped" in page
    finally:
        fleet.stop()
