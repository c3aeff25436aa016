"""Deploying a bundle: one signed, retained instruction per target device."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from fleet_server.datadir import DataDir
from fleet_server.delta_store import DeltaStore
from fleet_server.errors import InvalidInputError, NotFoundError
from fleet_server.registry import Registry, Row
from ota.delta import DeltaRef
from ota.errors import ProtocolError
from ota.instructions import BundleRef, DelegateOverride, Instruction, sign_instruction

Fence = Callable[[], AbstractContextManager[None]]
"""A transaction that commits only while this replica leads (``leader.Lease.fenced``)."""

log = logging.getLogger(__name__)

FINISHED_TARGET_STATES = frozenset({"committed", "rolled_back", "failed", "cancelled"})
"""Target states a cancel leaves alone (everything else is still on its way)."""

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
                 ttl_s: float, clock: Callable[[], float] = time.time,
                 deltas: DeltaStore | None = None) -> None:
        self._registry = registry
        self._deltas = deltas
        self._dir = data_dir
        self._publish = publish
        self._ttl = ttl_s
        self._clock = clock

    def deploy(self, ref: str, device_id: str | None = None, group: str | None = None,
               *, created_by: str = "admin",
               delegate_override: dict[str, str | None] | None = None) -> Row:
        request = DeployRequest(ref, device_id, group)
        override = _override(delegate_override)
        bundle = self._registry.find_bundle(key=request.bundle)
        if request.device_id is not None:
            devices = [self._registry.get_device(device_id=request.device_id)]
            kind, value = "device", request.device_id
        else:
            if request.group is None:
                raise RuntimeError("a deployment request names a device or a group")
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
            self._instruct(device, bundle_ref, deployment_id, delegate_override=override)
        return self._registry.get_deployment(deployment_id=deployment_id)

    def cancel(self, deployment_id: str) -> Row:
        """Stop a deployment on every target that has not finished it: each such device gets
        a new signed instruction (higher seq, ``bundle`` null: keep serving what you serve,
        drop the transfer) and its target row becomes ``cancelled``. Targets that already
        committed, rolled back or failed, and devices a later deployment has since moved
        on, are left alone (docs/install-state-machine.md, "Operator cancel")."""
        row = self._registry.get_deployment(deployment_id=deployment_id)
        for target in row["targets"]:
            if target["state"] in FINISHED_TARGET_STATES:
                continue
            device = self._registry.get_device(device_id=target["device_id"])
            if device.get("desired_deployment") != deployment_id:
                continue
            seq = self._instruct(device, None, deployment_id)
            self._registry.update_target_state(device_id=device["id"], instruction_seq=seq,
                                               state="cancelled", error="cancelled by operator")
        return self._registry.get_deployment(deployment_id=deployment_id)

    def bundle_ref_for(self, key: str) -> BundleRef:
        """The signed ``BundleRef`` of a stored bundle (by sha256 or ``name@version``)."""
        bundle = self._registry.find_bundle(key=key)
        publisher = self._registry.get_publisher(key_id=bundle["publisher_key_id"])
        return BundleRef(
            name=bundle["name"], version=bundle["version"], sha256=bundle["id"],
            size=int(bundle["size"]), chunk_size=int(bundle["chunk_size"]),
            chunk_hashes=tuple(bundle["chunk_hashes"]),
            publisher_key_id=bundle["publisher_key_id"],
            publisher_public_key=publisher["pem"])

    def instruct(self, device_id: str, bundle_ref: BundleRef | None, deployment_id: str, *,
                 shadow: BundleRef | None = None, shadow_sample_rate: float = 0.0,
                 shadow_samples_per_minute: float | None = None,
                 fence: Fence | None = None) -> int:
        """Sign, record and publish one instruction (used by rollouts); returns its seq.
        With ``fence`` (the leader's ``Lease.fenced``) the seq, the signed instruction and its
        target row are written in one transaction that commits only while the lease is
        held; the instruction is published after that commit, never before."""
        return self._instruct({"id": device_id}, bundle_ref, deployment_id, shadow=shadow,
                              shadow_sample_rate=shadow_sample_rate,
                              shadow_samples_per_minute=shadow_samples_per_minute,
                              fence=fence)

    def _instruct(self, device: dict[str, Any], bundle_ref: BundleRef | None,
                  deployment_id: str, *, shadow: BundleRef | None = None,
                  shadow_sample_rate: float = 0.0,
                  shadow_samples_per_minute: float | None = None,
                  delegate_override: DelegateOverride | None = None,
                  fence: Fence | None = None) -> int:
        device_id = str(device["id"])
        delta = self._delta_for(device, bundle_ref)
        with self._registry.lock, (fence or self._registry.transaction)():
            seq = self._registry.issue_seq(
                device_id=device_id, sha256=bundle_ref.sha256 if bundle_ref else None,
                deployment_id=deployment_id)
            now = self._clock()
            instruction = Instruction(device_id=device_id, seq=seq, issued_at=now,
                                      expires_at=now + self._ttl, deployment_id=deployment_id,
                                      bundle=bundle_ref, shadow=shadow,
                                      shadow_sample_rate=shadow_sample_rate,
                                      shadow_samples_per_minute=shadow_samples_per_minute,
                                      delegate_override=delegate_override, delta=delta)
            envelope = sign_instruction(instruction, self._dir.fleet_key)
            current = self._registry.record_instruction(device_id=device_id, seq=seq,
                                                        envelope=envelope)
            self._registry.add_deployment_target(deployment_id=deployment_id,
                                                 device_id=device_id, instruction_seq=seq)
        if current:  # a later seq issued meanwhile (another replica) has the last word
            self._publish(device_id, envelope)
        return seq


    def _delta_for(self, device: dict[str, Any], bundle_ref: BundleRef | None
                   ) -> DeltaRef | None:
        """A delta to offer beside ``bundle_ref``: when the device last reported another
        version of the same bundle name as its active model (docs/mqtt-protocol.md,
        "Deltas"). Never fails a deployment: no delta means the bundle alone."""
        if self._deltas is None or bundle_ref is None:
            return None
        state = device.get("state") if "state" in device else self._registry.get_device(
            device_id=str(device["id"])).get("state")
        active = state.get("active") if isinstance(state, dict) else None
        if not isinstance(active, dict) or active.get("name") != bundle_ref.name:
            return None
        base = active.get("sha256")
        if not isinstance(base, str) or base == bundle_ref.sha256:
            return None
        try:
            return self._deltas.offer(base, bundle_ref.sha256)
        except Exception:  # a delta is an optimisation: log it, send the bundle
            log.exception("no delta for %s: offering it failed", device.get("id"))
            return None


def _override(obj: dict[str, str | None] | None) -> DelegateOverride | None:
    """The operator's ``{"variant", "delegate"}`` preference as a signed-instruction field."""
    if not obj or not any(obj.values()):
        return None
    try:
        return DelegateOverride(variant=obj.get("variant"), delegate=obj.get("delegate"))
    except ProtocolError as e:
        raise InvalidInputError(str(e)) from e
