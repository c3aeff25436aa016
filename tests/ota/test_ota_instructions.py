"""Signed instructions: accepted when genuine; tampering, a foreign key, replays, expiry
and the wrong device each raise their own error."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ota.errors import (
    ExpiredError,
    InstructionError,
    InstructionSignatureError,
    ProtocolError,
    ReplayError,
    WrongDeviceError,
)
from ota.instructions import BundleRef, Instruction, sign_instruction, verify_instruction
from ota.limits import ProtocolLimits
from ota.model import replace

NOW = 1764384000.0
FLEET_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLISHER_PEM = (
    Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    .public_key()
    .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


def make_instruction(**changes: object) -> Instruction:
    bundle = BundleRef(
        name="digits",
        version="1.0.0",
        sha256="a" * 64,
        size=600_000,
        chunk_size=262_144,
        chunk_hashes=("b" * 64, "c" * 64, "d" * 64),
        publisher_key_id="e" * 64,
        publisher_public_key=PUBLISHER_PEM,
    )
    instr = Instruction(
        device_id="dev-1",
        seq=8,
        issued_at=NOW,
        expires_at=NOW + 7 * 86400,
        deployment_id="dep-3",
        bundle=bundle,
    )
    return replace(instr, **changes)


def verify(envelope: bytes, **kw: object) -> Instruction:
    args: dict[str, object] = {"device_id": "dev-1", "last_seq": 7, "now": NOW + 60}
    args.update(kw)
    return verify_instruction(envelope, FLEET_KEY.public_key(), **args)  # type: ignore[arg-type]


def test_signed_instruction_is_accepted_and_parsed_back() -> None:
    instr = make_instruction()
    got = verify(sign_instruction(instr, FLEET_KEY))
    assert got == instr
    assert got.bundle is not None and len(got.bundle.chunk_hashes) == 3


def test_no_model_instruction_is_accepted() -> None:
    instr = make_instruction(bundle=None, deployment_id=None)
    assert verify(sign_instruction(instr, FLEET_KEY)) == instr


def test_tampered_payload_fails_the_signature() -> None:
    env = json.loads(sign_instruction(make_instruction(), FLEET_KEY))
    payload = json.loads(base64.b64decode(env["payload"]))
    payload["bundle"]["sha256"] = "f" * 64
    env["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(InstructionSignatureError):
        verify(json.dumps(env).encode())


def test_signature_by_another_key_is_refused_even_with_the_fleet_key_id() -> None:
    rogue = Ed25519PrivateKey.generate()
    env = json.loads(sign_instruction(make_instruction(), rogue))
    with pytest.raises(InstructionSignatureError, match="signed by key"):
        verify(json.dumps(env).encode())
    genuine = json.loads(sign_instruction(make_instruction(), FLEET_KEY))
    env["key_id"] = genuine["key_id"]
    with pytest.raises(InstructionSignatureError, match="does not verify"):
        verify(json.dumps(env).encode())


@pytest.mark.parametrize("last_seq", [8, 9, 100])
def test_replayed_instruction_with_equal_or_lower_seq_is_refused(last_seq: int) -> None:
    with pytest.raises(ReplayError):
        verify(sign_instruction(make_instruction(seq=8), FLEET_KEY), last_seq=last_seq)


@pytest.mark.parametrize("now", [NOW + 7 * 86400, NOW + 8 * 86400])
def test_expired_instruction_is_refused(now: float) -> None:
    with pytest.raises(ExpiredError):
        verify(sign_instruction(make_instruction(), FLEET_KEY), now=now)


def test_instruction_for_another_device_is_refused() -> None:
    with pytest.raises(WrongDeviceError):
        verify(sign_instruction(make_instruction(), FLEET_KEY), device_id="dev-2")


def test_signature_is_checked_before_the_payload_is_trusted() -> None:
    # Wrong device AND forged: the forgery is what gets reported.
    rogue = Ed25519PrivateKey.generate()
    env = sign_instruction(make_instruction(device_id="dev-2"), rogue)
    with pytest.raises(InstructionSignatureError):
        verify(env)


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage",
        b"[]",
        b'{"payload": "!!!", "key_id": "00", "signature": "AAAA"}',
        b'{"payload": "e30=", "key_id": 5, "signature": "AAAA"}',
        b'{"key_id": "00", "signature": "AAAA"}',
    ],
)
def test_malformed_envelopes_are_instruction_errors(raw: bytes) -> None:
    with pytest.raises(InstructionError):
        verify(raw)


def test_signed_but_malformed_payload_is_an_instruction_error() -> None:
    payload = json.dumps({"protocol": 2, "device_id": "dev-1"}).encode()
    env = {
        "payload": base64.b64encode(payload).decode(),
        "key_id": json.loads(sign_instruction(make_instruction(), FLEET_KEY))["key_id"],
        "signature": base64.b64encode(FLEET_KEY.sign(payload)).decode(),
    }
    with pytest.raises(InstructionError, match="protocol"):
        verify(json.dumps(env).encode())


def test_oversize_envelope_is_refused() -> None:
    env = sign_instruction(make_instruction(), FLEET_KEY)
    with pytest.raises(InstructionError, match="exceeds limit"):
        verify(env, limits=ProtocolLimits(max_instruction_payload=len(env) - 1))


def test_bundle_over_the_size_limit_is_refused() -> None:
    env = sign_instruction(make_instruction(), FLEET_KEY)
    with pytest.raises(InstructionError, match="bundle.size"):
        verify(env, limits=ProtocolLimits(max_bundle_size=500_000))


@pytest.mark.parametrize(
    ("size", "hashes"),
    [(600_000, 2), (600_000, 4), (262_144, 2), (262_145, 1)],
)
def test_chunk_hash_count_must_match_size_and_chunk_size(size: int, hashes: int) -> None:
    with pytest.raises(ProtocolError, match="chunk_hashes"):
        replace(
            make_instruction().bundle,  # type: ignore[type-var]
            size=size,
            chunk_hashes=("b" * 64,) * hashes,
        )
