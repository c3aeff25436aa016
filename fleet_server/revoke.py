"""``revoke_device``: what one revocation does, for the REST route, the console and the CLI.

The revocation list records the device and its key's fingerprint (``revocations.py``), the
audit log says who did it, and the embedded broker closes the device's connection now; from
then on the broker refuses it (``BrokerAuthority``), ingest drops its reports
(``MqttBridge``), the API refuses its certificate and its key cannot enrol again. On
Mosquitto the server does not hold the connection: docs/operations.md says what to run.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_public_key

from fleet_server.ca import key_fingerprint
from fleet_server.services import FleetServices


async def revoke_device(services: FleetServices, *, device_id: str, actor: str,
                        client: str | None) -> dict[str, Any]:
    """Revoke ``device_id`` (NotFoundError if unknown); revoking twice changes nothing."""
    device = services.registry.get_device(device_id=device_id)
    try:
        fingerprint: str | None = key_fingerprint(load_pem_public_key(device["public_key"].encode()))
    except (ValueError, TypeError, AttributeError):
        fingerprint = None
    entry, new = services.revocations.revoke(device_id=device_id, key_fingerprint=fingerprint,
                                             revoked_by=actor)
    disconnected = False
    if new:
        services.revocations.write_crl(services.ca)  # Mosquitto's crlfile
        services.audit.record(actor=actor, action="device.revoke", subject=device_id,
                              detail={"key_fingerprint": fingerprint}, client=client)
    if services.broker is not None:
        disconnected = await services.broker.disconnect(device_id)
    return {"device_id": device_id, "revoked_at": entry.revoked_at,
            "revoked_by": entry.revoked_by, "key_fingerprint": entry.key_fingerprint,
            "disconnected": disconnected, "already_revoked": not new}
