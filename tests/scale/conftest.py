"""Fixtures for the scale tests: a fleet server with public bundle URLs, a published bundle,
enrolled devices holding a signed instruction for it, and an nginx cache in front."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from fleet_server.api_client import FleetClient
from fleet_server.config import ServerSettings
from fleet_server.serve import RunningServer, start_server
from model_bundles import keys
from ota.instructions import BundleRef, verify_instruction
from ota.limits import DEFAULT_CHUNK_SIZE
from tests.faults.conftest import broker as broker  # the restartable Mosquitto fixture
from tests.fleet_server.bundle_helpers import make_bundle

from .nginx_cache import NginxCache, nginx_binary

EXTRA_BYTES = 3 * DEFAULT_CHUNK_SIZE + 1000


@dataclass
class Device:
    device_id: str
    secret: str
    ref: BundleRef


@dataclass
class Fleet:
    server: RunningServer
    client: FleetClient
    publisher: Ed25519PrivateKey
    devices: list[Device]

    def by_hash_answers(self) -> float:
        """How many times the server itself answered the content-addressed route."""
        total = 0.0
        for metric in self.server.services.metrics.registry.collect():
            for s in metric.samples:
                if s.name == "edgefleet_bundle_http_responses_total" and \
                        s.labels["route"] == "by_hash":
                    total += s.value
        return total


def enrol_and_deploy(server: RunningServer, client: FleetClient, ids: list[str],
                     bundle: str) -> list[Device]:
    fleet_key = load_pem_public_key(server.services.data_dir.fleet_public_pem.encode())
    devices = []
    for device_id in ids:
        token = client.create_enrolment_token("default")["token"]
        creds = client.enrol(token, device_id, keys.public_key_pem(Ed25519PrivateKey.generate()))
        client.deploy(bundle, device_id=device_id)
        envelope = server.services.registry.get_device(device_id=device_id)["desired_envelope"]
        instr = verify_instruction(envelope.encode() if isinstance(envelope, str) else envelope,
                                   fleet_key, device_id=device_id, last_seq=0, now=time.time())
        assert instr.bundle is not None
        devices.append(Device(device_id, creds["mqtt"]["password"], instr.bundle))
    return devices


@pytest.fixture
def fleet(tmp_path: Path, sample_onnx: Path, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    options = getattr(request, "param", {"public_bundle_urls": True})
    settings = ServerSettings(data_dir=tmp_path / "fleet", port=0, mqtt_port=0, **options, insecure=True)
    with start_server(settings) as server, \
            FleetClient(server.http_url, server.admin_token) as client:
        key = Ed25519PrivateKey.generate()
        client.add_publisher(keys.public_key_pem(key), "tests")
        # random notes make the bundle span several chunks (and not compress)
        client.upload_bundle(make_bundle(tmp_path / "sample.efb", sample_onnx, key,
                                         extra=os.urandom(EXTRA_BYTES)))
        devices = enrol_and_deploy(server, client, ["cam-1", "cam-2"], "sample@1.0.0")
        yield Fleet(server, client, key, devices)


@pytest.fixture
def nginx(tmp_path: Path, fleet: Fleet) -> Iterator[NginxCache]:
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light; "
                    "scripts/install-system-deps.sh installs it)")
    proxy = NginxCache(binary, tmp_path / "nginx", fleet.server.http_url)
    yield proxy
    proxy.stop()

