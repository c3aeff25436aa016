"""Bytes-only helpers for driving ``UpdaterCore``: signed instructions and bundle refs of
arbitrary bytes (the core never opens a bundle)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from model_bundles import keys
from ota.instructions import BundleRef, DelegateOverride, Instruction, sign_instruction
from ota.updater.core import UpdaterCore
from ota.updater.record import DeviceRecord

DEVICE = "dev-1"
CHUNK = 1024
PUBLISHER = Ed25519PrivateKey.generate()


def ref_of(data: bytes, version: str, *, chunk_size: int = CHUNK) -> BundleRef:
    pub = PUBLISHER.public_key()
    return BundleRef(
        name="sample", version=version, sha256=hashlib.sha256(data).hexdigest(),
        size=len(data), chunk_size=chunk_size,
        chunk_hashes=tuple(hashlib.sha256(data[i:i + chunk_size]).hexdigest()
                           for i in range(0, len(data), chunk_size)),
        publisher_key_id=keys.key_id(pub), publisher_public_key=keys.public_key_pem(pub))


@dataclass
class Fleet:
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    seq: int = 0

    def instruction(self, bundle: BundleRef | None, *, shadow: BundleRef | None = None,
                    rate: float = 0.0, ttl_s: float = 3600,
                    override: DelegateOverride | None = None) -> bytes:
        self.seq += 1
        now = time.time()
        return sign_instruction(Instruction(
            device_id=DEVICE, seq=self.seq, issued_at=now - 60, expires_at=now + ttl_s,
            deployment_id="d-1", bundle=bundle, shadow=shadow, shadow_sample_rate=rate,
            delegate_override=override), self.key)

    def core(self, record: DeviceRecord | None = None, *,
             http_min_bytes: int = 1 << 40) -> UpdaterCore:
        return UpdaterCore(record or DeviceRecord(), fleet_key=self.key.public_key(),
                           device_id=DEVICE, http_min_bytes=http_min_bytes)
