"""A real server (in process), signed bundles and a simulated fleet for the rollout tests."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_server.api_client import FleetClient
from model_bundles import keys
from tests.fleet_server.bundle_helpers import make_bundle as _make_bundle

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


def free_fixed_port() -> int:
    """A free port below the kernel's ephemeral range, as a production broker's fixed port
    is: no local connect is ever given it, so a listener that stops and starts again on it
    cannot find it taken by a client that connected to itself while nothing listened."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10_000, max(10_001, low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


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
    """A signed ``sample@version`` bundle whose bytes differ per version."""
    return _make_bundle(out, model, key, version=version, extra=f"version {version}".encode())


def publish(client: FleetClient, tmp: Path, model: Path, versions: list[str]) -> None:
    key = Ed25519PrivateKey.generate()
    client.add_publisher(keys.public_key_pem(key), "tests")
    for v in versions:
        client.upload_bundle(make_bundle(tmp / f"sample-{v}.efb", model, key, v))


def rollout_state(client: FleetClient, rollout_id: str) -> dict[str, Any]:
    return client.get_rollout(rollout_id)
