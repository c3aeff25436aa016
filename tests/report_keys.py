"""Device keys for tests that register devices by hand and publish reports as an agent
would: every report is signed with the device's key (``ota.signed_report``)."""

from __future__ import annotations

from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from model_bundles import keys as mb_keys
from ota.signed_report import ReportSigner

KEYS: dict[str, Ed25519PrivateKey] = {}
"""The key of each device id registered through ``device_pem`` (the latest one wins)."""


class _Report(Protocol):
    device_id: str

    def to_bytes(self) -> bytes: ...


def device_pem(device_id: str) -> str:
    """A fresh key for ``device_id``, remembered; its public PEM for the registry."""
    KEYS[device_id] = Ed25519PrivateKey.generate()
    return mb_keys.public_key_pem(KEYS[device_id])


def signed(report: _Report, *, by: str | None = None) -> bytes:
    """``report`` in an envelope signed by its device's key (or ``by``'s)."""
    return ReportSigner(KEYS[by or report.device_id]).sign(report.to_bytes())
