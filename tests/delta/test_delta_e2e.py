"""Deltas end to end with real processes: ``fleet-server serve`` (embedded broker) and three
``device-agent run`` agents. sample@1.0.0 runs on two of them; a head-only fine-tune,
sample@1.1.0, is deployed:

- to a device serving 1.0.0: the server builds a delta, offers it in the signed instruction,
  the agent rebuilds 1.1.0 from it, and serves exactly what a full install serves;
- to a device with no model: it gets the full bundle, no delta;
- to the other 1.0.0 device after the server's cached delta was corrupted on disk: the
  agent refuses the bad chunk, falls back to the full bundle and says why in its history.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fleet_server.api_client import FleetClient
from model_bundles.samples import sample_model, write_sample_model
from tests.e2e.harness import Fleet, run_cli, wait_for

from .conftest import fine_tune_head

pytestmark = pytest.mark.e2e

DELTA_DEV, FRESH_DEV, CORRUPT_DEV = "delta-a", "fresh-b", "corrupt-c"


@dataclass
class DeltaFleet:
    fleet: Fleet
    client: FleetClient
    ports: dict[str, int]
    v11_model: Path
    v11_sha: str


def _history(client: FleetClient, device: str) -> list[str]:
    return [str(e.get("detail") or "") for e in client.device_events(device, limit=200)]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeltaFleet]:
    """v1 on DELTA_DEV and CORRUPT_DEV, nothing on FRESH_DEV; then v1.1 deployed to
    DELTA_DEV and FRESH_DEV (which builds and caches the delta on the server)."""
    root = tmp_path_factory.mktemp("delta-e2e")
    v1 = write_sample_model(root / "v1.onnx", seed=0)
    v11 = root / "v11.onnx"
    onnx.save_model(fine_tune_head(sample_model(0), 1), str(v11))
    fleet = Fleet(root, serve_args=("--insecure",))
    client = FleetClient(fleet.url, fleet.token)
    try:
        keys = root / "keys"
        run_cli("model-bundle", "keygen", "--out", str(keys))
        fleet.cli("fleet-server", "publishers", "add", str(keys / "publisher.pub"))
        shas = {}
        for version, model in (("1.0.0", v1), ("1.1.0", v11)):
            out = root / f"sample-{version}.efb"
            run_cli("model-bundle", "build", str(model), "--name", "sample", "--version",
                    version, "--task", "classifier", "--key", str(keys / "publisher.key"),
                    "--out", str(out))
            shas[version] = fleet.cli("model-bundle", "publish", str(out)).stdout.split()[0]
        ports = {}
        for device in (DELTA_DEV, FRESH_DEV, CORRUPT_DEV):
            # CORRUPT_DEV fetches over HTTP (by-hash URL, device credentials), the others
            # over MQTT chunks
            config = {"http_download_min_bytes": 0} if device == CORRUPT_DEV else None
            _, _, api = fleet.start_agent(device, config=config)
            ports[device] = int(api["port"])
        for device in (DELTA_DEV, CORRUPT_DEV):
            client.deploy("sample@1.0.0", device_id=device)
        for device in (DELTA_DEV, CORRUPT_DEV):
            fleet.wait_active(device, "sample@1.0.0")
        for device in (DELTA_DEV, FRESH_DEV):
            client.deploy("sample@1.1.0", device_id=device)
        for device in (DELTA_DEV, FRESH_DEV):
            fleet.wait_active(device, "sample@1.1.0")
        yield DeltaFleet(fleet, client, ports, v11, shas["1.1.0"])
    finally:
        client.close()
        fleet.stop()


def _predict(port: int, x: np.ndarray) -> dict[str, object]:
    r = httpx.post(f"http://127.0.0.1:{port}/v1/predict",
                   json={"inputs": {"features": x.tolist()}}, timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_head_only_fine_tune_arrives_as_a_delta_and_serves_what_a_full_install_serves(
        deployed: DeltaFleet) -> None:
    history = _history(deployed.client, DELTA_DEV)
    rebuilt = [h for h in history if h.startswith("delta: rebuilt sample@1.1.0")]
    assert rebuilt and "from sample@1.0.0" in rebuilt[0], history
    assert not [h for h in history if "delta update" in h]
    state = deployed.client.get_device(DELTA_DEV)["state"]
    assert state["active"]["sha256"] == deployed.v11_sha  # byte for byte the bundle
    deltas = list((deployed.fleet.data / "bundles" / "deltas").glob("*.efd"))
    assert len(deltas) == 1
    bundle = deployed.fleet.data / "bundles" / f"{deployed.v11_sha}.efb"
    assert deltas[0].stat().st_size < bundle.stat().st_size / 2

    x = np.random.default_rng(7).standard_normal((16, 16)).astype(np.float32)
    via_delta = _predict(deployed.ports[DELTA_DEV], x)
    via_full = _predict(deployed.ports[FRESH_DEV], x)
    assert via_delta["bundle"] == via_full["bundle"] == "sample@1.1.0"
    assert via_delta["outputs"] == via_full["outputs"]
    expect = ort.InferenceSession(str(deployed.v11_model), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(np.asarray(via_delta["outputs"]["scores"]),  # type: ignore[index]
                               expect.run(["scores"], {"features": x})[0], rtol=1e-6)


def test_a_device_without_the_base_version_gets_the_full_bundle(deployed: DeltaFleet) -> None:
    history = _history(deployed.client, FRESH_DEV)
    assert not [h for h in history if "delta" in h], history
    state = deployed.client.get_device(FRESH_DEV)["state"]
    assert state["active"]["sha256"] == deployed.v11_sha


def test_a_corrupted_delta_falls_back_to_the_full_bundle(deployed: DeltaFleet) -> None:
    [cached] = (deployed.fleet.data / "bundles" / "deltas").glob("*.efd")
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF  # disk rot on the server: the signed chunk hash no longer fits
    # (the device fetches it over HTTP from GET /api/v1/bundles/by-hash/<sha256>.efd)
    cached.write_bytes(bytes(data))
    deployed.client.deploy("sample@1.1.0", device_id=CORRUPT_DEV)
    deployed.fleet.wait_active(CORRUPT_DEV, "sample@1.1.0")
    history = wait_for(lambda: (h := _history(deployed.client, CORRUPT_DEV)) and any(
        "delta update of sample@1.1.0 failed" in x for x in h) and h, 30,
        "the fallback in the device's history", deployed.fleet.procs())
    [why] = [h for h in history if "delta update of sample@1.1.0 failed" in h]
    assert "http download" in why and "fetching the full bundle" in why
    assert not [h for h in history if h.startswith("delta: rebuilt")]
    state = deployed.client.get_device(CORRUPT_DEV)["state"]
    assert state["active"]["sha256"] == deployed.v11_sha
    x = np.random.default_rng(8).standard_normal((4, 16)).astype(np.float32)
    assert _predict(deployed.ports[CORRUPT_DEV], x)["outputs"] == \
        _predict(deployed.ports[FRESH_DEV], x)["outputs"]
