"""Deploying a bundle: one signed, retained instruction per target device."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fleet_server.datadir import DataDir
from fleet_server.errors import InvalidInputError, NotFoundError
from fleet_server.registry import Registry, Row
from ota.instructions import BundleRef, Instruction, sign_instruction

Publisher = Callable[[str, bytes], None]
"""``publish(device_id, envelope)``: puts a signed instruction on the device's desired topic."""


@dataclass(frozen=True)
class DeployRequest:
    bundle: str
    device_id: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        if (self.device_id is None) == (self.group is None):
            raise InvalidInputError("give exactly one of device_id or group")
        if not self.bundle:
            raise InvalidInputError("bundle must be name@version or a sha256 id")


class Deployer:
    """Turns a deployment request into instructions, records them, and publishes them."""

    def __init__(self, *, registry: Registry, data_dir: DataDir, publish: Publisher,
                 ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self._registry = registry
        self._dir = data_dir
        self._publish = publish
        self._ttl = ttl_s
        self._clock = clock

    def deploy(self, ref: str, device_id: str | None = None, group: str | None = None,
               *, created_by: str = "admin") -> Row:
        request = DeployRequest(ref, device_id, group)
        bundle = self._registry.find_bundle(key=request.bundle)
        if request.device_id is not None:
            devices = [self._registry.get_device(device_id=request.device_id)]
            kind, value = "device", request.device_id
        else:
            assert request.group is not None
            devices = self._registry.list_devices(group=request.group)
            if not devices:
                raise NotFoundError(f"no devices in group {request.group}")
            kind, value = "group", request.group
        publisher = self._registry.get_publisher(key_id=bundle["publisher_key_id"])
        bundle_ref = BundleRef(
            name=bundle["name"], version=bundle["version"], sha256=bundle["id"],
            size=int(bundle["size"]), chunk_size=int(bundle["chunk_size"]),
            chunk_hashes=tuple(bundle["chunk_hashes"]),
            publisher_key_id=bundle["publisher_key_id"],
            publisher_public_key=publisher["pem"])
        deployment_id = self._registry.next_deployment_id()
        self._registry.add_deployment(
            deployment_id=deployment_id, bundle_ref=bundle["ref"], bundle_id=bundle["id"],
            target_kind=kind, target_value=value, created_by=created_by)
        for device in devices:
            self._instruct(device, bundle_ref, deployment_id)
        return self._registry.get_deployment(deployment_id=deployment_id)

    def _instruct(self, device: dict[str, Any], bundle_ref: BundleRef,
                  deployment_id: str) -> None:
        device_id = str(device["id"])
        seq = self._registry.issue_seq(device_id=device_id, sha256=bundle_ref.sha256,
                                       deployment_id=deployment_id)
        now = self._clock()
        instruction = Instruction(device_id=device_id, seq=seq, issued_at=now,
                                  expires_at=now + self._ttl, deployment_id=deployment_id,
                                  bundle=bundle_ref)
        envelope = sign_instruction(instruction, self._dir.fleet_key)
        self._registry.set_desired_envelope(device_id=device_id, envelope=envelope)
        self._registry.add_deployment_target(deployment_id=deployment_id, device_id=device_id,
                                             instruction_seq=seq)
        self._publish(device_id, envelope)
