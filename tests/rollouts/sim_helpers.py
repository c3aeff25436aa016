"""A real server (in process), signed bundles and a simulated fleet for the rollout tests."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_server.api_client import FleetClient
from model_bundles import keys
from model_bundles.manifest import Manifest
from model_bundles.writer import write_bundle

FAST_PLAN: dict[str, Any] = {"stages": [
    {"name": "shadow 5%", "kind": "shadow", "percent": 5, "deadline_s": 60,
     "gates": {"min_devices": 5, "min_samples": 200, "min_agreement": 0.95}},
    {"name": "canary 5%", "kind": "canary", "percent": 5, "deadline_s": 60,
     "gates": {"min_devices": 5, "min_samples": 200, "min_agreement": None}},
    {"name": "25%", "kind": "canary", "percent": 25, "deadline_s": 60,
     "gates": {"min_devices": 25, "min_samples": 500, "min_agreement": None}},
    {"name": "100%", "kind": "canary", "percent": 100, "deadline_s": 60,
     "gates": {"min_devices": 150, "min_samples": 0, "min_agreement": None}},
]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def make_bundle(out: Path, model: Path, key: Ed25519PrivateKey, version: str) -> Path:
    data = model.read_bytes()
    extra = f"version {version}".encode()
    files = [{"path": "model.onnx", "sha256": hashlib.sha256(data).hexdigest(),
              "size": len(data)},
             {"path": "notes.txt", "sha256": hashlib.sha256(extra).hexdigest(),
              "size": len(extra)}]
    manifest = Manifest.from_dict({
        "format_version": 1, "name": "sample", "version": version,
        "created_at": "2026-11-29T02:50:00Z", "task": "classifier",
        "inputs": [{"name": "features", "dtype": "float32", "shape": ["batch", 16]}],
        "outputs": [{"name": "scores", "dtype": "float32", "shape": ["batch", 4]},
                    {"name": "label", "dtype": "int64", "shape": ["batch"]}],
        "files": files,
        "variants": [{"id": "onnx-fp32", "file": "model.onnx", "format": "onnx",
                      "precision": "fp32", "delegates": ["cpu"],
                      "tolerance": {"atol": 1e-4, "rtol": 1e-3}}],
        "golden": None, "latency_budget_ms": None,
        "publisher_key_id": keys.key_id(key.public_key()),
    })
    return write_bundle(out, manifest, key, {"model.onnx": model, "notes.txt": extra})


def publish(client: FleetClient, tmp: Path, model: Path, versions: list[str]) -> None:
    key = Ed25519PrivateKey.generate()
    client.add_publisher(keys.public_key_pem(key), "tests")
    for v in versions:
        client.upload_bundle(make_bundle(tmp / f"sample-{v}.efb", model, key, v))


def rollout_state(client: FleetClient, rollout_id: str) -> dict[str, Any]:
    return client.get_rollout(rollout_id)
