"""Device-signed reports: the envelope a device wraps its state, telemetry, events and
shadow reports in, signed with the device key made at enrolment.

Envelope (JSON, one per MQTT message on the device's ``state``, ``telemetry``, ``events``
and ``shadow`` topics)::

    {"protocol": 1, "payload": "<base64 of the report's canonical JSON bytes>",
     "key_id": "<hex SHA-256 of the raw device public key>",
     "signature": "<base64 Ed25519 over exactly those payload bytes>"}

The same shape as the fleet's signed instruction (``ota.instructions``). The receiver checks
the signature over the decoded bytes it received and only then parses them as the topic's
message (``open_report``): it never verifies a re-encoding. Pure: keys and bytes in, bytes
or a ``ReportSignatureError`` out; which device, which seq and which bundle a report may
name is the server's check (``fleet_server.report_verify``).
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, ClassVar, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from msgspec import Meta

from model_bundles.keys import key_id
from ota import payload as p
from ota.errors import ProtocolError
from ota.limits import DEFAULT_LIMITS, PROTOCOL_VERSION, ProtocolLimits
from ota.model import Model, Sha256, decode_fast, load_message, validate

__all__ = ["ReportEnvelope", "ReportKey", "ReportSignatureError", "ReportSigner",
           "UnsignedReportError", "open_report", "sign_report"]


class ReportSignatureError(ProtocolError):
    """A report envelope that is malformed, names another key, or does not verify."""


class UnsignedReportError(ReportSignatureError):
    """A bare report (no envelope): what agents before signed reports send."""


class ReportEnvelope(Model, frozen=True):
    """What a device publishes on ``state``, ``telemetry``, ``events`` and ``shadow``."""

    WHAT: ClassVar[str] = "ReportEnvelope"
    ERROR: ClassVar[type[ProtocolError]] = ReportSignatureError

    payload: Annotated[str, Meta(
        min_length=1, description="base64 of the report's canonical JSON bytes")]
    key_id: Sha256
    signature: Annotated[str, Meta(
        min_length=1, max_length=256, description="base64 Ed25519 over the payload bytes")]


class ReportKey(Protocol):
    """A device's Ed25519 public key as a verifier holds it (``fleet_server.report_keys``:
    verified by libsodium), instead of a ``cryptography`` key."""

    @property
    def key_id(self) -> str:
        """Hex SHA-256 of the raw public key (``model_bundles.keys.key_id``)."""
        ...

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` is this key's Ed25519 signature of exactly ``data``."""
        ...


def sign_report(report: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """The envelope bytes for ``report`` (a message's ``to_bytes()``)."""
    return ReportSigner(private_key).sign(report)


class ReportSigner:
    """Signs reports with one device key (its key id computed once)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.key_id = key_id(private_key.public_key())

    def sign(self, report: bytes) -> bytes:
        return p.dumps({
            "protocol": PROTOCOL_VERSION,
            "payload": base64.b64encode(report).decode("ascii"),
            "key_id": self.key_id,
            "signature": base64.b64encode(self._key.sign(report)).decode("ascii"),
        })


def _b64(value: str, name: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise ReportSignatureError(f"ReportEnvelope: '{name}' is not base64") from e


def _looks_unsigned(obj: dict[str, Any]) -> bool:
    return "payload" not in obj and "signature" not in obj


def open_report(envelope: bytes, public_key: Ed25519PublicKey | ReportKey,
                limits: ProtocolLimits = DEFAULT_LIMITS) -> bytes:
    """The report bytes ``envelope`` authenticates with the device's ``public_key``.

    ``UnsignedReportError`` for a bare report, ``ReportSignatureError`` for a malformed
    envelope, another key or a signature that does not verify; ``ProtocolError`` for bytes
    that are not a protocol-1 JSON object at all."""
    what = ReportEnvelope.WHAT
    env = decode_fast(ReportEnvelope, envelope, max_size=limits.max_json_payload)
    if env is None:  # the slow way, for the error that says what is wrong
        obj = load_message(envelope, max_size=limits.max_json_payload, what=what)
        if _looks_unsigned(obj):
            raise UnsignedReportError(f"{what}: unsigned report (no payload/signature)")
        try:
            env = validate(ReportEnvelope, obj, what)
        except ProtocolError as e:
            raise ReportSignatureError(str(e)) from None
    key = _CryptographyKey(public_key) if isinstance(public_key, Ed25519PublicKey) else public_key
    if env.key_id != key.key_id:
        raise ReportSignatureError(
            f"{what}: signed by key {env.key_id[:16]}, the device's key is {key.key_id[:16]}")
    payload, signature = _b64(env.payload, "payload"), _b64(env.signature, "signature")
    if not key.verify(signature, payload):
        raise ReportSignatureError(f"{what}: signature does not verify")
    return payload


class _CryptographyKey:
    """A ``cryptography`` public key as a ``ReportKey``."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key, self.key_id = key, key_id(key)

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            return False
        return True
