"""One real fleet server for the console tests, with 10,000 seeded devices, telemetry, two
bundles and two running rollouts (created through the REST API, so the real driver runs)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_server.config import ServerSettings
from fleet_server.serve import RunningServer, start_server
from model_bundles import keys
from tests.fleet_server.bundle_helpers import make_bundle

from .fleet_seed import FLEET, seed


@dataclass
class SeededFleet:
    server: RunningServer
    api: httpx.Client  # admin bearer token
    rollouts: list[str]
    now: float

    @property
    def url(self) -> str:
        return self.server.http_url

    @property
    def registry(self):  # noqa: ANN201 - the server's own Registry
        return self.server.services.registry


@pytest.fixture(scope="package")
def fleet(tmp_path_factory: pytest.TempPathFactory, sample_onnx: Path) -> Iterator[SeededFleet]:
    root = tmp_path_factory.mktemp("console-fleet")
    settings = ServerSettings(data_dir=root / "fleet", port=0, mqtt_port=0,
                              rollout_tick_s=0.5, insecure=True)
    with start_server(settings) as server:
        now = time.time()
        seed(server.services.data_dir.registry_path, now)
        api = httpx.Client(base_url=server.http_url, timeout=30,
                           headers={"Authorization": f"Bearer {server.admin_token}"})
        key = Ed25519PrivateKey.generate()
        assert api.post("/api/v1/publishers", json={"public_key": keys.public_key_pem(key),
                                                    "name": "vision-team"}).status_code == 201
        rollouts = []
        for name, version, extra in (("vision", "2.0.0", b"v2"), ("audio", "2.1.0", b"a2")):
            path = make_bundle(root / f"{name}.efb", sample_onnx, key, name=name,
                               version=version, extra=extra)
            r = api.post("/api/v1/bundles", content=path.read_bytes(),
                         headers={"Content-Type": "application/octet-stream"})
            assert r.status_code in (200, 201), r.text
            targets = [d.id for d in FLEET if d.bundle and d.bundle.startswith(name)][:12]
            r = api.post("/api/v1/rollouts", json={"bundle": f"{name}@{version}",
                                                   "devices": targets})
            assert r.status_code == 201, r.text
            rollouts.append(r.json()["id"])
        try:
            yield SeededFleet(server=server, api=api, rollouts=rollouts, now=now)
        finally:
            api.close()


def login(page, fleet: SeededFleet) -> None:  # noqa: ANN001 - a Playwright page
    page.goto(f"{fleet.url}/console/login")
    page.fill("#token", fleet.server.admin_token)
    page.click("#login-submit")
    page.wait_for_url("**/console/")
