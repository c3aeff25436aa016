"""Signed instructions (the retained desired state of one device).

Envelope (JSON): ``{"payload": base64(canonical JSON), "key_id": hex, "signature":
base64(Ed25519 over the payload bytes)}``. ``verify_instruction`` checks the signature over
the decoded bytes it received, then parses them, then checks device, replay and expiry.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Annotated, Any, ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from msgspec import Meta

from model_bundles.errors import ManifestError
from model_bundles.keys import key_id
from model_bundles.manifest import canonical_json, validate_name, validate_version
from ota import payload as p
from ota.delta import DeltaRef
from ota.errors import (
    ExpiredError,
    InstructionError,
    InstructionSignatureError,
    ProtocolError,
    ReplayError,
    WrongDeviceError,
)
from ota.limits import DEFAULT_LIMITS, PROTOCOL_VERSION, ProtocolLimits
from ota.model import (
    PEM_PATTERN,
    DeviceId,
    Fraction,
    Model,
    NameId,
    Number,
    PositiveCount,
    Sha256,
    Text128,
    Text256,
    field_error,
    load_json,
    load_typed,
    validate,
)


def chunk_count(size: int, chunk_size: int) -> int:
    """How many chunks a file of ``size`` bytes has: ``ceil(size / chunk_size)``."""
    return -(-size // chunk_size)


BundleName = Annotated[str, Meta(extra_json_schema={"pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"})]
BundleVersion = Annotated[str, Meta(max_length=64, description="X.Y.Z or X.Y.Z-prerelease")]
PublicKeyPem = Annotated[str, Meta(min_length=1, max_length=4096, pattern=PEM_PATTERN)]


class BundleRef(Model, frozen=True):
    """The bundle an instruction asks for, with the hash of every chunk."""

    WHAT: ClassVar[str] = "bundle"

    name: BundleName
    version: BundleVersion
    sha256: Sha256
    size: PositiveCount
    chunk_size: PositiveCount
    chunk_hashes: tuple[Sha256, ...]
    publisher_key_id: Sha256
    publisher_public_key: PublicKeyPem

    def check(self) -> None:
        for field, rule in (("name", validate_name), ("version", validate_version)):
            try:
                rule(getattr(self, field))
            except ManifestError as e:
                raise field_error(field, f"is a {e}") from None
        expected = chunk_count(self.size, self.chunk_size)
        if len(self.chunk_hashes) != expected:
            raise ValueError(
                f"bundle.chunk_hashes has {len(self.chunk_hashes)} entries; size {self.size} "
                f"in chunks of {self.chunk_size} needs {expected}"
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
        return validate(cls, obj, what)


class DelegateOverride(Model, frozen=True, forbid_unknown_fields=True):
    """An operator's (variant, delegate) preference for the device (docs/delegates.md):
    a preference, not an order; the golden gate still decides, and the agent reports
    whether it was honoured and why not. Unknown keys are refused."""

    WHAT: ClassVar[str] = "delegate_override"

    variant: NameId | None = None
    delegate: NameId | None = None

    def check(self) -> None:
        if self.variant is None and self.delegate is None:
            raise ValueError("delegate_override needs a variant or a delegate")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in (("variant", self.variant), ("delegate", self.delegate))
                if v is not None}

    @classmethod
    def from_dict(cls, obj: dict[str, Any], what: str = "delegate_override") -> DelegateOverride:
        return validate(cls, obj, what)


MAX_SHADOW_PACE = 6000.0
"""The most shadow samples per minute an instruction may ask for (100 a second)."""
ShadowPace = Annotated[float, Meta(gt=0.0, le=MAX_SHADOW_PACE)]


class Instruction(Model, frozen=True):
    """Desired state for one device; ``bundle=None`` means "no model"."""

    WHAT: ClassVar[str] = "Instruction"
    ERROR: ClassVar[type[ProtocolError]] = InstructionError
    NULL_AS: ClassVar[dict[str, Any]] = {"shadow_sample_rate": float}

    device_id: DeviceId
    seq: PositiveCount
    issued_at: Number
    expires_at: Number
    deployment_id: Text128 | None
    bundle: BundleRef | None
    shadow: BundleRef | None = None
    """A candidate bundle to run in shadow beside the active one (never installed to a slot)."""
    shadow_sample_rate: Fraction | None = 0.0
    """Share (0..1) of live predict calls also run on the shadow candidate."""
    shadow_samples_per_minute: ShadowPace | None = None
    """The shadow samples per minute the rollout stage needs from this device (the pace);
    the device caps it with its own budget. Absent: the device's configured pace."""
    delegate_override: DelegateOverride | None = None
    """The operator's (variant, delegate) preference for this deployment, if any."""
    delta: DeltaRef | None = None
    """A delta that rebuilds ``bundle`` from the bundle ``delta.base_sha256`` (ota.delta)."""

    def check(self) -> None:
        if not self.expires_at > self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        if self.delta is not None and (self.bundle is None
                                       or self.delta.base_sha256 == self.bundle.sha256):
            raise ValueError("delta needs a bundle other than its base")

    def to_dict(self) -> dict[str, Any]:
        # Spelled out, as are BundleRef's and DelegateOverride's: these are the bytes the
        # fleet key signs, so what is written is visible here, not derived.
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
        if self.shadow_samples_per_minute is not None:  # likewise (protocol 1, minor addition)
            d["shadow_samples_per_minute"] = self.shadow_samples_per_minute
        if self.delegate_override is not None:  # likewise written only when set
            d["delegate_override"] = self.delegate_override.to_dict()
        if self.delta is not None:  # likewise (protocol 1, minor 1)
            d["delta"] = self.delta.to_dict()
        return d

    def to_payload(self) -> bytes:
        """The canonical JSON bytes that get signed."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_payload(cls, data: bytes, limits: ProtocolLimits = DEFAULT_LIMITS) -> Instruction:
        """Parse payload bytes (already authenticated); ``InstructionError`` if malformed."""
        what = "Instruction"
        try:
            instr = load_typed(cls, data, max_size=limits.max_instruction_payload, what=what)
            if instr.bundle is not None:
                instr.bundle.check_limits(limits)
            if instr.shadow is not None:
                instr.shadow.check_limits(limits)
            if instr.delta is not None and instr.bundle is not None:
                instr.delta.check_limits(limits, instr.bundle.size)
        except InstructionError:
            raise
        except ProtocolError as e:
            raise InstructionError(str(e)) from e
        return instr


class InstructionEnvelope(Model, frozen=True):
    """What the fleet server publishes (retained) on ``.../desired``: the signed payload
    bytes in base64, the fleet key's id and the Ed25519 signature over those bytes."""

    WHAT: ClassVar[str] = "instruction envelope"
    ERROR: ClassVar[type[ProtocolError]] = InstructionError

    payload: Annotated[str, Meta(description="base64 of the canonical JSON payload")]
    key_id: Text256
    signature: Annotated[str, Meta(max_length=256, description="base64 Ed25519")]


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
        obj = load_json(envelope, max_size=limits.max_instruction_payload, what=what)
        env = validate(InstructionEnvelope, obj, what)
    except ProtocolError as e:
        raise InstructionError(str(e)) from e
    payload = _b64(env.payload, "payload")
    signature = _b64(env.signature, "signature")
    envelope_key_id = env.key_id
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
