"""Secrets the server hands out: prefixed (so they never look like a CLI option and are easy
to spot in logs or a secret scanner) and minted in one place."""

from __future__ import annotations

import secrets
import time
from typing import Any

from fleet_server.registry import Registry

ADMIN, SERVER_MQTT, DEVICE_MQTT, ENROLMENT = "efa", "efs", "efd", "efe"


def new_secret(kind: str, nbytes: int = 32) -> str:
    """A URL-safe random secret of ``nbytes`` bytes of entropy, prefixed ``<kind>_``."""
    return f"{kind}_{secrets.token_urlsafe(nbytes)}"


def issue_enrolment_token(registry: Registry, *, group: str, ttl_s: float,
                          max_ttl_s: float, ca_hash: str | None = None) -> dict[str, Any]:
    """Mint a one-time enrolment token for ``group``; its lifetime is capped at ``max_ttl_s``.

    With ``ca_hash`` the token carries the fleet CA's pin: ``efe_<secret>.sha256:<hex>``
    (the whole string is the token; the agent refuses a server whose CA does not match)."""
    token = new_secret(ENROLMENT, 24)
    if ca_hash:
        token = f"{token}.{ca_hash}"
    expires_at = time.time() + min(ttl_s, max_ttl_s)
    registry.add_enrolment_token(token=token, group=group, expires_at=expires_at)
    row: dict[str, Any] = {"token": token, "group": group, "expires_at": expires_at}
    if ca_hash:
        row["ca_hash"] = ca_hash
    return row
