"""Signed instructions (the retained desired state of one device).

Envelope (JSON): ``{"payload": base64(canonical JSON), "key_id": hex, "signature":
base64(Ed25519 over the payload bytes)}``. ``verify_instruction`` checks the signature over
the decoded bytes it received, then parses them, then checks device, replay and expiry.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from model_bundles.errors import ManifestError
from model_bundles.keys import key_id
from model_bundles.manifest import canonical_json, validate_name, validate_version
from ota import payload as p
from ota.errors import (
    ExpiredError,
    InstructionError,
    InstructionSignatureError,
    ProtocolError,
    ReplayError,
    WrongDeviceError,
)
from ota.limits import DEFAULT_LIMITS, PROTOCOL_VERSION, ProtocolLimits
from ota.topics import validate_device_id


def chunk_count(size: int, chunk_size: int) -> int:
    """How many chunks a file of ``size`` bytes has: ``ceil(size / chunk_size)``."""
    return -(-size // chunk_size)


@dataclass(frozen=True)
class BundleRef:
    """The bundle an instruction asks for, with the hash of every chunk."""

    name: str
    version: str
    sha256: str
    size: int
    chunk_size: int
    chunk_hashes: tuple[str, ...]
    publisher_key_id: str
    publisher_public_key: str

    def __post_init__(self) -> None:
        try:
            validate_name(self.name)
            validate_version(self.version)
        except ManifestError as e:
            raise ProtocolError(f"bundle: {e}") from e
        p.check_sha256(self.sha256, "bundle.sha256")
        p.check_int(self.size, "bundle.size", minimum=1)
        p.check_int(self.chunk_size, "bundle.chunk_size", minimum=1)
        p.require(isinstance(self.chunk_hashes, tuple), "bundle.chunk_hashes must be a tuple")
        for h in self.chunk_hashes:
            p.check_sha256(h, "bundle.chunk_hashes[]")
        expected = chunk_count(self.size, self.chunk_size)
        p.require(
            len(self.chunk_hashes) == expected,
            f"bundle.chunk_hashes has {len(self.chunk_hashes)} entries; size {self.size} "
            f"in chunks of {self.chunk_size} needs {expected}",
        )
        p.check_sha256(self.publisher_key_id, "bundle.publisher_key_id")
        p.check_str(self.publisher_public_key, "bundle.publisher_public_key", max_len=4096)
        p.require(
            self.publisher_public_key.startswith("-----BEGIN PUBLIC KEY-----"),
            "bundle.publisher_public_key must be a SubjectPublicKeyInfo PEM",
        )

    def check_limits(self, limits: ProtocolLimits) -> None:
        p.require(
            self.size <= limits.max_bundle_size,
            f"bundle.size {self.size} exceeds limit {limits.max_bundle_size}",
        )
        p.require(
            self.chunk_size <= limits.max_chunk_size,
            f"bundle.chunk_size {self.chunk_size} exceeds limit {limits.max_chunk_size}",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "chunk_size": self.chunk_size,
            "chunk_hashes": list(self.chunk_hashes),
            "publisher_key_id": self.publisher_key_id,
            "publisher_public_key": self.publisher_public_key,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any], what: str = "bundle") -> BundleRef:
        return cls(
            name=p.get_str(obj, "name", what),
            version=p.get_str(obj, "version", what),
            sha256=p.get_str(obj, "sha256", what),
            size=p.get_int(obj, "size", what),
            chunk_size=p.get_int(obj, "chunk_size", what),
            chunk_hashes=p.get_str_list(obj, "chunk_hashes", what),
            publisher_key_id=p.get_str(obj, "publisher_key_id", what),
            publisher_public_key=p.get_str(obj, "publisher_public_key", what),
        )


_OVERRIDE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class DelegateOverride:
    """An operator's (variant, delegate) preference for the device (docs/delegates.md):
    a preference, not an order; the golden gate still decides, and the agent reports
    whether it was honoured and why not."""

    variant: str | None = None
    delegate: str | None = None

    def __post_init__(self) -> None:
        p.require(self.variant is not None or self.delegate is not None,
                  "delegate_override needs a variant or a delegate")
        for name in ("variant", "delegate"):
            value = getattr(self, name)
            p.require(value is None or (isinstance(value, str) and bool(_OVERRIDE_ID.match(value))),
                      f"delegate_override.{name} must be 1-64 characters [A-Za-z0-9._-]")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in (("variant", self.variant), ("delegate", self.delegate))
                if v is not None}

    @classmethod
    def from_dict(cls, obj: dict[str, Any], what: str = "delegate_override") -> DelegateOverride:
        unknown = set(obj) - {"variant", "delegate"}
        p.require(not unknown, f"{what}: unknown keys {sorted(unknown)}")
        return cls(variant=p.get_opt_str(obj, "variant", what),
                   delegate=p.get_opt_str(obj, "delegate", what))


@dataclass(frozen=True)
class Instruction:
    """Desired state for one device; ``bundle=None`` means "no model"."""

    device_id: str
    seq: int
    issued_at: float
    expires_at: float
    deployment_id: str | None
    bundle: BundleRef | None
    shadow: BundleRef | None = None
    """A candidate bundle to run in shadow beside the active one (never installed to a slot)."""
    shadow_sample_rate: float = 0.0
    """Share (0..1) of live predict calls also run on the shadow candidate."""
    delegate_override: DelegateOverride | None = None
    """The operator's (variant, delegate) preference for this deployment, if any."""

    def __post_init__(self) -> None:
        validate_device_id(self.device_id)
        p.check_int(self.seq, "seq", minimum=1)
        p.check_number(self.issued_at, "issued_at")
        p.check_number(self.expires_at, "expires_at")
        p.require(self.expires_at > self.issued_at, "expires_at must be after issued_at")
        p.check_opt_str(self.deployment_id, "deployment_id", max_len=128)
        p.require(
            self.bundle is None or isinstance(self.bundle, BundleRef),
            "bundle must be a BundleRef or None",
        )
        p.require(
            self.shadow is None or isinstance(self.shadow, BundleRef),
            "shadow must be a BundleRef or None",
        )
        if type(self.shadow_sample_rate) is int:
            object.__setattr__(self, "shadow_sample_rate", float(self.shadow_sample_rate))
        p.check_number(self.shadow_sample_rate, "shadow_sample_rate")
        p.require(
            self.shadow_sample_rate <= 1.0,
            f"shadow_sample_rate must be <= 1.0, got {self.shadow_sample_rate}",
        )
        p.require(
            self.delegate_override is None or isinstance(self.delegate_override, DelegateOverride),
            "delegate_override must be a DelegateOverride or None",
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "protocol": PROTOCOL_VERSION,
            "device_id": self.device_id,
            "seq": self.seq,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "deployment_id": self.deployment_id,
            "bundle": None if self.bundle is None else self.bundle.to_dict(),
        }
        # Optional shadow fields appear only when used, so payloads without shadow keep
        # exactly the bytes older agents know.
        if self.shadow is not None or self.shadow_sample_rate != 0.0:
            d["shadow"] = None if self.shadow is None else self.shadow.to_dict()
            d["shadow_sample_rate"] = self.shadow_sample_rate
        if self.delegate_override is not None:  # likewise written only when set
            d["delegate_override"] = self.delegate_override.to_dict()
        return d

    def to_payload(self) -> bytes:
        """The canonical JSON bytes that get signed."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_payload(cls, data: bytes, limits: ProtocolLimits = DEFAULT_LIMITS) -> Instruction:
        """Parse payload bytes (already authenticated); ``InstructionError`` if malformed."""
        what = "Instruction"
        try:
            obj = p.load_object(data, max_size=limits.max_instruction_payload, what=what)
            p.check_protocol(obj, what)
            bundle = p.get_obj(obj, "bundle", what)
            shadow = p.get_obj(obj, "shadow", what)
            rate = obj.get("shadow_sample_rate")
            override = p.get_obj(obj, "delegate_override", what)
            instr = cls(
                device_id=p.get_str(obj, "device_id", what),
                seq=p.get_int(obj, "seq", what),
                issued_at=p.get_float(obj, "issued_at", what),
                expires_at=p.get_float(obj, "expires_at", what),
                deployment_id=p.get_opt_str(obj, "deployment_id", what),
                bundle=None if bundle is None else BundleRef.from_dict(bundle, f"{what}.bundle"),
                shadow=None if shadow is None else BundleRef.from_dict(shadow, f"{what}.shadow"),
                shadow_sample_rate=(
                    0.0 if rate is None else p.get_float(obj, "shadow_sample_rate", what)
                ),
                delegate_override=None if override is None else DelegateOverride.from_dict(
                    override, f"{what}.delegate_override"),
            )
            if instr.bundle is not None:
                instr.bundle.check_limits(limits)
            if instr.shadow is not None:
                instr.shadow.check_limits(limits)
        except InstructionError:
            raise
        except ProtocolError as e:
            raise InstructionError(str(e)) from e
        return instr


def sign_instruction(instr: Instruction, private_key: Ed25519PrivateKey) -> bytes:
    """The envelope bytes the fleet server publishes (retained) on the device's ``desired``."""
    payload = instr.to_payload()
    envelope = {
        "payload": base64.b64encode(payload).decode("ascii"),
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(private_key.sign(payload)).decode("ascii"),
    }
    return p.dumps(envelope)


def _b64(value: str, name: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise InstructionError(f"instruction envelope: '{name}' is not base64") from e


def open_envelope(
    envelope: bytes, fleet_public_key: Ed25519PublicKey, limits: ProtocolLimits = DEFAULT_LIMITS
) -> bytes:
    """Check the envelope's signature and return the payload bytes it authenticates."""
    what = "instruction envelope"
    try:
        obj = p.load_object(envelope, max_size=limits.max_instruction_payload, what=what)
        payload_b64 = p.get_str(obj, "payload", what)
        envelope_key_id = p.get_str(obj, "key_id", what)
        signature_b64 = p.get_str(obj, "signature", what)
    except ProtocolError as e:
        raise InstructionError(str(e)) from e
    payload = _b64(payload_b64, "payload")
    signature = _b64(signature_b64, "signature")
    expected_id = key_id(fleet_public_key)
    if envelope_key_id != expected_id:
        raise InstructionSignatureError(
            f"instruction signed by key {envelope_key_id[:16]!r}, expected fleet key {expected_id[:16]}"
        )
    try:
        fleet_public_key.verify(signature, payload)
    except InvalidSignature as e:
        raise InstructionSignatureError("instruction signature does not verify") from e
    return payload


def verify_instruction(
    envelope: bytes,
    fleet_public_key: Ed25519PublicKey,
    *,
    device_id: str,
    last_seq: int,
    now: float,
    limits: ProtocolLimits = DEFAULT_LIMITS,
) -> Instruction:
    """Accept an instruction only if signed by the fleet key, for this device, newer than
    ``last_seq`` and not expired at ``now``; else raise the matching ``InstructionError``."""
    payload = open_envelope(envelope, fleet_public_key, limits)
    instr = Instruction.from_payload(payload, limits)
    if instr.device_id != device_id:
        raise WrongDeviceError(
            f"instruction is for device {instr.device_id!r}, this is {device_id!r}"
        )
    if instr.seq <= last_seq:
        raise ReplayError(f"instruction seq {instr.seq} is not after applied seq {last_seq}")
    if not math.isfinite(now) or instr.expires_at <= now:
        raise ExpiredError(f"instruction expired at {instr.expires_at} (now {now})")
    return instr
