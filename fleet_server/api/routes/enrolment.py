"""Enrolment: admins mint one-time tokens; a device trades one for MQTT credentials."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from fleet_server.api.deps import AdminDep, ServicesDep, audit
from fleet_server.api.schemas import EnrolIn, EnrolmentTokenIn
from fleet_server.errors import ConflictError, EnrolmentError, InvalidInputError
from fleet_server.registry import hash_secret
from fleet_server.tokens import DEVICE_MQTT, issue_enrolment_token, new_secret
from fleet_server.trust import parse_publisher_pem

router = APIRouter(tags=["enrolment"])

BAD_TOKEN = "enrolment token is unknown, already used or expired"  # noqa: S105 - an error message, not a token


@router.post("/enrolment-tokens", status_code=201)
def create_token(body: EnrolmentTokenIn, request: Request, services: ServicesDep,
                 _: AdminDep) -> dict[str, Any]:
    row = issue_enrolment_token(services.registry, group=body.group, ttl_s=body.ttl_s,
                                max_ttl_s=services.settings.max_enrolment_ttl_s)
    audit(request, services, "enrolment_token.create", body.group,
          {"expires_at": row["expires_at"]})
    return row


@router.post("/enrol", status_code=201)
def enrol(body: EnrolIn, request: Request, services: ServicesDep) -> JSONResponse:
    try:
        parse_publisher_pem(body.public_key)
    except InvalidInputError as e:
        raise InvalidInputError(f"device public_key: {e}") from e
    registry = services.registry
    # The token is checked before the id, so a caller without a valid token gets the same
    # 403 for every id and cannot probe which devices exist. A valid token is only consumed
    # once the id is known to be free.
    if registry.enrolment_token_group(token=body.token, now=time.time()) is None:
        raise EnrolmentError(BAD_TOKEN)
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
    return JSONResponse(status_code=201, content={
        "device_id": body.device_id,
        "group": group,
        "mqtt": {"url": services.mqtt_url_for(request.url.hostname),
                 "username": body.device_id, "password": secret},
        "fleet_public_key": services.data_dir.fleet_public_pem,
        "fleet_key_id": services.data_dir.fleet_key_id,
        "server_url": server_url,
        "trust_root": services.trust.root_bytes().decode("utf-8"),
    })
