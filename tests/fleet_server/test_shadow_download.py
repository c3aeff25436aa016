"""A device may download (HTTP ranges) the bundle and the shadow candidate its current
instruction names, and nothing else: the same rule as chunk requests over MQTT."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from model_bundles import keys

from .bundle_helpers import make_bundle


def _as_device(device_id: str, secret: str) -> dict[str, str]:
    token = base64.b64encode(f"{device_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Range": "bytes=0-9"}


def test_a_device_downloads_its_shadow_candidate_and_nothing_else(
        api: TestClient, tmp_path: Path, sample_onnx: Path) -> None:
    key = Ed25519PrivateKey.generate()
    assert api.post("/api/v1/publishers", json={"public_key": keys.public_key_pem(key),
                                                "name": "ml"}).status_code == 201
    ids = {}
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        path = make_bundle(tmp_path / f"{version}.efb", sample_onnx, key, version=version,
                           extra=version.encode())
        ids[version] = api.post("/api/v1/bundles", content=path.read_bytes(), headers={
            "Content-Type": "application/octet-stream"}).json()["id"]
    token = api.post("/api/v1/enrolment-tokens", json={"group": "lab"}).json()["token"]
    enrolled = api.post("/api/v1/enrol", json={
        "token": token, "device_id": "dev-1",
        "public_key": keys.public_key_pem(Ed25519PrivateKey.generate())},
        headers={"Authorization": ""}).json()
    secret = enrolled["mqtt"]["password"]
    registry = api.app.state.services.registry  # type: ignore[attr-defined]
    # the instruction the server keeps for the device: bundle 1.0.0, shadow 2.0.0
    registry.issue_seq(device_id="dev-1", sha256=ids["1.0.0"], deployment_id="d-1")
    payload = json.dumps({"bundle": {"sha256": ids["1.0.0"]},
                          "shadow": {"sha256": ids["2.0.0"]}}).encode()
    registry.set_desired_envelope(device_id="dev-1", envelope=json.dumps(
        {"payload": base64.b64encode(payload).decode()}).encode())

    def fetch(version: str) -> httpx.Response:
        return api.get(f"/api/v1/bundles/{ids[version]}/download",
                       headers=_as_device("dev-1", secret))

    assert fetch("1.0.0").status_code == 206
    assert fetch("2.0.0").status_code == 206 and len(fetch("2.0.0").content) == 10
    refused = fetch("3.0.0")  # neither its bundle nor its candidate
    assert refused.status_code == 404 and "for this device" in refused.text
