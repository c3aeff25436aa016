"""Device public keys as the server's report verifier holds them: checked by libsodium.

``open_report`` checks one Ed25519 signature per device report, and at a fleet's report
rate that check is most of the ingest worker's CPU. libsodium's ``crypto_sign_open`` (through
PyNaCl) takes about half the time of OpenSSL's (through ``cryptography``) on the same
signature, and releases the GIL while it runs (``python -m bench.report_signing``;
docs/adr/0007-libsodium-report-verification.md). Keys are still parsed and validated by
``cryptography`` (``model_bundles.keys``): only the verification differs, and both accept
exactly the RFC 8032 signatures a device makes (``tests/fleet_server/test_report_keys.py``).
"""

from __future__ import annotations

from nacl.bindings import crypto_sign_BYTES, crypto_sign_open
from nacl.exceptions import BadSignatureError, CryptoError

from model_bundles import keys as mb_keys

__all__ = ["SodiumKey"]


class SodiumKey:
    """One device's Ed25519 public key (a ``ota.signed_report.ReportKey``)."""

    __slots__ = ("key_id", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
        self.raw = raw
        self.key_id = mb_keys.raw_key_id(raw)

    @classmethod
    def from_pem(cls, pem: str) -> SodiumKey:
        """The key of a PEM ``SubjectPublicKeyInfo`` (``KeyFileError``/``ValueError`` if it
        is not an Ed25519 public key)."""
        return cls(mb_keys.public_key_raw(mb_keys.load_public_key(pem)))

    def verify(self, signature: bytes, data: bytes) -> bool:
        if len(signature) != crypto_sign_BYTES:
            return False
        try:
            crypto_sign_open(signature + data, self.raw)
        except (BadSignatureError, CryptoError, ValueError):
            return False
        return True

    def __repr__(self) -> str:
        return f"SodiumKey({self.key_id[:16]})"
