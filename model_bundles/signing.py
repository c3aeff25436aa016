"""The signature envelope stored as ``manifest.sig``.

``{"alg": "ed25519", "format_version": 1, "key_id": "<hex>", "signature": "<base64>"}``
(canonical JSON). The signature is Ed25519 over the exact stored ``manifest.json`` bytes.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .errors import ManifestError, SignatureError, UnknownKeyError
from .keys import key_id as compute_key_id
from .manifest import FORMAT_VERSION, canonical_json, parse_canonical_json, validate_key_id

ALG = "ed25519"


@dataclass(frozen=True)
class SignatureEnvelope:
    key_id: str
    signature: bytes
    alg: str = ALG
    format_version: int = FORMAT_VERSION

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "alg": self.alg,
                "format_version": self.format_version,
                "key_id": self.key_id,
                "signature": base64.b64encode(self.signature).decode("ascii"),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SignatureEnvelope:
        """Parse strictly; any problem is a :class:`SignatureError`."""
        try:
            obj = parse_canonical_json(data, "signature envelope")
        except ManifestError as exc:
            raise SignatureError(exc.detail) from None
        if not isinstance(obj, dict):
            raise SignatureError("signature envelope must be a JSON object")
        expected = {"alg", "format_version", "key_id", "signature"}
        if set(obj) != expected:
            extra = sorted(set(obj) - expected)
            missing = sorted(expected - set(obj))
            raise SignatureError(
                f"signature envelope has unknown key {extra[0]!r}"
                if extra
                else f"signature envelope lacks {missing[0]!r}"
            )
        if obj["format_version"] != FORMAT_VERSION or isinstance(obj["format_version"], bool):
            raise SignatureError(f"unsupported envelope format_version {obj['format_version']!r}")
        if obj["alg"] != ALG:
            raise SignatureError(f"unsupported algorithm {obj['alg']!r}")
        try:
            validate_key_id(obj["key_id"], "key_id")
        except ManifestError as exc:
            raise SignatureError(exc.detail) from None
        sig_text = obj["signature"]
        if not isinstance(sig_text, str):
            raise SignatureError("signature must be a base64 string")
        try:
            signature = base64.b64decode(sig_text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise SignatureError("signature is not valid base64") from None
        if len(signature) != 64 or base64.b64encode(signature).decode("ascii") != sig_text:
            raise SignatureError("signature is not 64 bytes of canonical base64")
        return cls(key_id=obj["key_id"], signature=signature)


def sign_manifest(manifest_bytes: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """Return the ``manifest.sig`` bytes for the stored ``manifest.json`` bytes."""
    signature = private_key.sign(bytes(manifest_bytes))
    return SignatureEnvelope(
        key_id=compute_key_id(private_key.public_key()), signature=signature
    ).to_bytes()


def trusted_key_map(
    trusted_keys: Iterable[Ed25519PublicKey] | Mapping[str, Ed25519PublicKey],
) -> dict[str, Ed25519PublicKey]:
    """``{key_id: key}`` for an iterable of public keys (or pass a mapping through)."""
    if isinstance(trusted_keys, Mapping):
        return {compute_key_id(k): k for k in trusted_keys.values()}
    return {compute_key_id(k): k for k in trusted_keys}


def verify_manifest_signature(
    manifest_bytes: bytes,
    envelope_bytes: bytes,
    trusted_keys: Iterable[Ed25519PublicKey] | Mapping[str, Ed25519PublicKey],
) -> str:
    """Verify the envelope over the exact manifest bytes; return the signer's key id.

    Raises :class:`SignatureError` (malformed envelope or bad signature) or
    :class:`UnknownKeyError` (key id not among ``trusted_keys``)."""
    envelope = SignatureEnvelope.from_bytes(envelope_bytes)
    keys = trusted_key_map(trusted_keys)
    key = keys.get(envelope.key_id)
    if key is None:
        raise UnknownKeyError(f"{envelope.key_id} is not a trusted publisher key")
    try:
        key.verify(envelope.signature, bytes(manifest_bytes))
    except InvalidSignature:
        raise SignatureError(
            f"signature by {envelope.key_id[:16]} does not verify over manifest.json"
        ) from None
    return envelope.key_id


__all__ = [
    "ALG",
    "SignatureEnvelope",
    "sign_manifest",
    "trusted_key_map",
    "verify_manifest_signature",
]
