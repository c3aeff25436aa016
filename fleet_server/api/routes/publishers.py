"""Publishers: the Ed25519 keys whose bundles the server accepts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from fleet_server.api import views
from fleet_server.api.deps import AdminDep, ServicesDep, audit
from fleet_server.api.schemas import PublisherIn
from fleet_server.trust import parse_publisher_pem

router = APIRouter(prefix="/publishers", tags=["publishers"])


@router.post("", status_code=201)
def add_publisher(body: PublisherIn, request: Request, services: ServicesDep,
                  _: AdminDep) -> JSONResponse:
    key_id, pem = parse_publisher_pem(body.public_key)
    existed = any(p["key_id"] == key_id for p in services.registry.list_publishers())
    row = services.registry.add_publisher(key_id=key_id, name=body.name or key_id[:12], pem=pem)
    audit(request, services, "publisher.add", key_id, {"name": row["name"], "existed": existed})
    return JSONResponse(views.publisher(row), status_code=200 if existed else 201)


@router.get("")
def list_publishers(services: ServicesDep, _: AdminDep) -> list[dict[str, Any]]:
    return [views.publisher(r) for r in services.registry.list_publishers()]
