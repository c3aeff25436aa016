"""The whole path with real processes: publish -> deploy -> device active -> predict ->
telemetry, with TLS on every link (the server's default: HTTPS verified against the fleet
CA, MQTT with the device's certificate from enrolment), over the embedded broker and over a
real Mosquitto run from what ``fleet-server mosquitto-config`` writes."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.security.broker_fleet import require_mosquitto
from tests.security.tls_fleet import run_mosquitto

from .harness import Fleet, run_cli, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["embedded", "mosquitto"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """None: the embedded broker; else ``mqtts://`` of a Mosquitto configured for the fleet
    whose data directory the test's ``Fleet`` uses (its CA is made here, first)."""
    if request.param == "embedded":
        yield None
        return
    require_mosquitto()
    with run_mosquitto(tmp_path / "server", tmp_path / "mosquitto") as (port, _):
        yield f"mqtts://127.0.0.1:{port}"


def test_publish_deploy_predict_and_telemetry_end_to_end(
    tmp_path: Path, broker: str | None, digits_onnx: Path, digits_samples: np.ndarray
) -> None:
    kind = "mosquitto" if broker else "embedded"
    fleet = Fleet(tmp_path, broker, insecure=False)
    try:
        assert (fleet.data / "admin.token").stat().st_mode & 0o777 == 0o600
        # TLS: HTTPS API, an mqtts:// broker, the agent's certificate
        assert fleet.url.startswith("https://")
        assert fleet.ports["mqtt_url"].startswith("mqtts://")

        # The ML engineer: keys, a signed bundle, verified offline, published.
        bundle, pub = fleet.build_bundle(digits_onnx, "digits", "1.0.0")
        verify = run_cli("model-bundle", "verify", str(bundle), "--trust", str(pub))
        assert "digits@1.0.0" in verify.stdout
        refused = fleet.cli("model-bundle", "publish", str(bundle), check=False)
        assert refused.returncode != 0
        assert "key" in (refused.stderr + refused.stdout).lower()
        fleet.cli("fleet-server", "publishers", "add", str(pub))
        published = fleet.cli("model-bundle", "publish", str(bundle))
        assert "digits@1.0.0" in published.stdout

        # Whoever sets up the device: enrol, then run the agent unattended.
        device_id = f"e2e-{kind}"
        agent, _, api = fleet.start_agent(device_id)
        wait_for(lambda: (d := fleet.device(device_id)) and d["online"], 60, "device online",
                 fleet.procs())

        # The operator deploys; the device fetches, verifies, installs and reports active.
        fleet.cli("fleet-server", "deploy", "digits@1.0.0", "--device", device_id)
        dev = fleet.wait_active(device_id, "digits@1.0.0")
        assert "CPUExecutionProvider" in dev["delegate"]

        # Local inference equals ONNX Runtime's own output for the same input.
        x = digits_samples[:5]
        url = f"http://127.0.0.1:{api['port']}/v1/predict"
        resp = httpx.post(url, json={"inputs": {"X": x.tolist()}}, timeout=10)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        ref = ort.InferenceSession(str(digits_onnx), providers=["CPUExecutionProvider"])
        label, proba = ref.run(["label", "probabilities"], {"X": x})
        assert body["bundle"] == "digits@1.0.0"
        assert "CPUExecutionProvider" in body["delegate"]
        assert body["outputs"]["label"] == label.tolist()
        np.testing.assert_allclose(np.asarray(body["outputs"]["probabilities"]), proba,
                                   rtol=1e-6, atol=1e-7)

        # Bad input: a clear 400, and the agent keeps serving.
        bad = httpx.post(url, json={"inputs": {"X": [[1.0, 2.0]]}}, timeout=10)
        assert bad.status_code == 400 and "X" in bad.json()["error"]
        assert httpx.post(url, json={"inputs": {"X": x[:1].tolist()}}, timeout=10).status_code == 200

        # The deployment shows the device committed; telemetry reaches the server.
        deployments = json.loads(fleet.cli("fleet-server", "deployments", "--json").stdout)
        assert [(t["device_id"], t["state"]) for t in deployments[0]["targets"]] == [
            (device_id, "committed")
        ]
        headers = {"Authorization": f"Bearer {fleet.token}"}

        def telemetry_seen() -> list[dict]:
            r = httpx.get(f"{fleet.url}/api/v1/devices/{device_id}/telemetry", headers=headers,
                          verify=fleet.verify)
            return [t for t in r.json() if t["total_inferences"] >= 2]

        records = wait_for(telemetry_seen, 30, "telemetry with the predictions", fleet.procs())
        assert records[-1]["latency_ms"]["p50"] > 0
        assert records[-1]["total_errors"] >= 1

        # Killed without a goodbye: the broker publishes the last will; the server shows offline.
        agent.stop(signal.SIGKILL)
        wait_for(lambda: (d := fleet.device(device_id)) and not d["online"], 90,
                 "device offline after its last will", (fleet.server,))
    finally:
        fleet.stop()
