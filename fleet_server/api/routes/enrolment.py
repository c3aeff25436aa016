"""Enrolment: operators mint one-time tokens (carrying the fleet CA's hash); a device trades
one for MQTT credentials and, with a CSR, a certificate from the fleet CA; it renews that
certificate with its current one (``docs/security.md``, "Device certificates")."""

from __future__ import annotations

import time
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from fleet_server.api.deps import AdminDep, ServicesDep, audit
from fleet_server.api.schemas import CertificateRenewIn, EnrolIn, EnrolmentTokenIn
from fleet_server.ca import CertificateError, key_fingerprint, parse_csr
from fleet_server.errors import (
    ConflictError,
    EnrolmentError,
    ForbiddenError,
    InvalidInputError,
)
from fleet_server.registry import hash_secret
from fleet_server.services import FleetServices
from fleet_server.tokens import DEVICE_MQTT, issue_enrolment_token, new_secret
from fleet_server.trust import parse_publisher_pem

router = APIRouter(tags=["enrolment"])

BAD_TOKEN = "enrolment token is unknown, already used or expired"  # noqa: S105 - an error message, not a token


@router.post("/enrolment-tokens", status_code=201)
def create_token(body: EnrolmentTokenIn, request: Request, services: ServicesDep,
                 _: AdminDep) -> dict[str, Any]:
    row = issue_enrolment_token(services.registry, group=body.group, ttl_s=body.ttl_s,
                                max_ttl_s=services.settings.max_enrolment_ttl_s,
                                ca_hash=services.ca.ca_hash())
    audit(request, services, "enrolment_token.create", body.group,
          {"expires_at": row["expires_at"]})
    return row


@router.get("/ca")
def fleet_ca(services: ServicesDep) -> dict[str, Any]:
    """The fleet CA bundle (public: an agent checks it against the hash in its token before
    it sends anything secret)."""
    return {"ca_hash": services.ca.ca_hash(), "trusted": services.ca.trusted_hashes(),
            "bundle": services.ca.trust_bundle_pem(),
            "overlap_until": services.ca.overlap_until()}


def _issued(services: FleetServices, csr: str, device_id: str) -> dict[str, Any]:
    return {"certificate": services.ca.issue_device_cert(csr, device_id),
            "ca_bundle": services.ca.trust_bundle_pem(), "ca_hash": services.ca.ca_hash()}


def _check_csr(csr: str, device_id: str, public_key_pem: str) -> str:
    """The CSR is well-formed, names the device and carries ``public_key_pem``; returns the
    key's fingerprint."""
    request = parse_csr(csr, device_id)
    fingerprint = key_fingerprint(request.public_key())
    if fingerprint != key_fingerprint(load_pem_public_key(public_key_pem.encode())):
        raise CertificateError("the CSR's key is not the device's public_key")
    return fingerprint


def _refuse_revoked_key(services: FleetServices, fingerprint: str) -> None:
    revoked = services.revocations.key_revoked(fingerprint)
    if revoked is not None:
        raise EnrolmentError(f"this device key was revoked (device {revoked.device_id}); "
                             "a revoked key cannot enrol again")


@router.post("/enrol", status_code=201)
def enrol(body: EnrolIn, request: Request, services: ServicesDep) -> JSONResponse:
    try:
        parse_publisher_pem(body.public_key)
    except InvalidInputError as e:
        raise InvalidInputError(f"device public_key: {e}") from e
    fingerprint = (_check_csr(body.csr, body.device_id, body.public_key) if body.csr is not None
                   else key_fingerprint(load_pem_public_key(body.public_key.encode())))
    registry = services.registry
    # The token is checked before the id, so a caller without a valid token gets the same
    # 403 for every id and cannot probe which devices exist. A valid token is only consumed
    # once the id is known to be free.
    if registry.enrolment_token_group(token=body.token, now=time.time()) is None:
        raise EnrolmentError(BAD_TOKEN)
    _refuse_revoked_key(services, fingerprint)  # after the token: no oracle for the keyless
    if registry.device_exists(device_id=body.device_id):
        raise ConflictError(f"device {body.device_id} is already enrolled")
    group = registry.consume_enrolment_token(token=body.token, now=time.time())
    if group is None:
        raise EnrolmentError(BAD_TOKEN)
    secret = new_secret(DEVICE_MQTT)
    registry.add_device(device_id=body.device_id, group=group, public_key=body.public_key,
                        mqtt_secret_hash=hash_secret(secret))
    registry.mark_token_used_by(token=body.token, device_id=body.device_id)
    server_url = str(request.base_url).rstrip("/")
    content: dict[str, Any] = {
        "device_id": body.device_id,
        "group": group,
        "mqtt": {"url": services.mqtt_url_for(request.url.hostname),
                 "username": body.device_id, "password": secret},
        "fleet_public_key": services.data_dir.fleet_public_pem,
        "fleet_key_id": services.data_dir.fleet_key_id,
        "server_url": server_url,
        "trust_root": services.trust.root_bytes().decode("utf-8"),
    }
    if body.csr is not None:
        content.update(_issued(services, body.csr, body.device_id))
    return JSONResponse(status_code=201, content=content)


@router.post("/devices/{device_id}/certificate")
def renew_certificate(device_id: str, body: CertificateRenewIn, request: Request,
                      services: ServicesDep) -> dict[str, Any]:
    """A new certificate for the key of the device's current one. The current certificate
    must be issued by a CA trusted now (the current one, or the previous one during a
    rollover), unexpired, name ``device_id``, and the device must not be revoked; the CSR,
    signed by the same key, proves the caller holds it."""
    try:
        current = services.ca.verify_device_cert(body.certificate)
    except CertificateError as e:
        raise ForbiddenError(f"certificate refused: {e}") from e
    if current.device_id != device_id:
        raise ForbiddenError(f"certificate refused: it names {current.device_id!r}, not {device_id!r}")
    if services.revocations.is_revoked(device_id):
        raise ForbiddenError(f"certificate refused: device {device_id} is revoked")
    device = services.registry.get_device(device_id=device_id)
    fingerprint = _check_csr(body.csr, device_id, device["public_key"])
    if fingerprint != current.key_fingerprint:
        raise ForbiddenError("certificate refused: the CSR's key is not the certificate's key")
    return _issued(services, body.csr, device_id)
