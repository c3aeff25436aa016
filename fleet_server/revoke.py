"""``revoke_device``: what one revocation does, for the REST route, the console and the CLI.

The revocation list records the device and its key's fingerprint (``revocations.py``), the
audit log says who did it, and the broker closes the device's open connection before the
answer goes back: the embedded broker directly, an external Mosquitto through its
dynamic-security plugin (``broker_control.py``). From then on the broker refuses it
(embedded: ``BrokerAuthority``; Mosquitto: its revoked role denies every publish and
subscription, and its CRL refuses the handshake after a reload), ingest drops its reports
(``MqttBridge``), the API refuses its certificate and its key cannot enrol again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_public_key

from fleet_server.broker_control import BrokerControl, BrokerControlError
from fleet_server.ca import key_fingerprint
from fleet_server.services import FleetServices

log = logging.getLogger(__name__)


async def revoke_device(services: FleetServices, *, device_id: str, actor: str,
                        client: str | None) -> dict[str, Any]:
    """Revoke ``device_id`` (NotFoundError if unknown); revoking twice changes nothing but
    closes the device's connection again if it has one."""
    device = services.registry.get_device(device_id=device_id)
    try:
        fingerprint: str | None = key_fingerprint(load_pem_public_key(device["public_key"].encode()))
    except (ValueError, TypeError, AttributeError):
        fingerprint = None
    entry, new = services.revocations.revoke(device_id=device_id, key_fingerprint=fingerprint,
                                             revoked_by=actor)
    if new:
        services.revocations.write_crl(services.ca)  # Mosquitto's crlfile
        services.audit.record(actor=actor, action="device.revoke", subject=device_id,
                              detail={"key_fingerprint": fingerprint}, client=client)
    disconnected, broker_error = await disconnect(services, device_id)
    return {"device_id": device_id, "revoked_at": entry.revoked_at,
            "revoked_by": entry.revoked_by, "key_fingerprint": entry.key_fingerprint,
            "disconnected": disconnected, "already_revoked": not new,
            "broker_error": broker_error}


async def disconnect(services: FleetServices, device_id: str) -> tuple[bool, str | None]:
    """(whether the broker closed a connection, why the broker could not be told)."""
    if services.broker is not None:
        return await services.broker.disconnect(device_id), None
    control = broker_control(services)
    if control is None:
        return False, "an external broker without TLS: restart or reload it to drop the device"
    try:
        await asyncio.to_thread(control.kick, device_id)
    except BrokerControlError as e:
        log.error("revoked %s, but the broker did not disconnect it: %s", device_id, e)
        return False, str(e)
    return True, None


def broker_control(services: FleetServices) -> BrokerControl | None:
    """The control client of the external TLS broker (None: embedded or ``--insecure``)."""
    external = services.settings.external_broker
    if external is None or not external.tls or services.tls is None:
        return None
    cert, key = services.ca.server_control_cert_files()
    return BrokerControl(host=external.host, port=external.port,
                         ca_bundle=services.tls.ca_bundle, cert=cert, key=key)
