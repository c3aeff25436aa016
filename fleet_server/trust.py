"""Boundary to model_bundles.keys: publisher PEMs in the registry -> trusted key set."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fleet_server.errors import InvalidInputError
from model_bundles import keys


def parse_publisher_pem(pem: str) -> tuple[str, str]:
    """Validate a publisher public key PEM; returns (key_id, normalised PEM)."""
    try:
        public = keys.load_public_key(pem.encode())
    except Exception as e:  # model_bundles raises its own family; any failure is bad input
        raise InvalidInputError(f"not an Ed25519 public key PEM: {e}") from e
    return keys.key_id(public), keys.public_key_pem(public)


def trusted_publisher_keys(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Registry publisher rows -> {key_id: public key} for verify_bundle."""
    out: dict[str, Any] = {}
    for row in rows:
        out[str(row["key_id"])] = keys.load_public_key(str(row["pem"]).encode())
    return out
