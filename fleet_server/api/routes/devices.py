"""Devices: list, show, telemetry, events, revoke."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from fleet_server.api import views
from fleet_server.api.deps import AdminDep, ServicesDep, client_address
from fleet_server.device_query import LATENCY_METHOD, DeviceQuery
from fleet_server.revoke import revoke_device

router = APIRouter(prefix="/devices", tags=["devices"])

Limit = Annotated[int, Query(ge=1, le=1000)]


@router.get("")
def list_devices(services: ServicesDep, _: AdminDep, response: Response,
                 group: str | None = None, status: str | None = None,
                 bundle: str | None = None, version: str | None = None,
                 delegate: str | None = None, trouble: str | None = None,
                 q: str | None = None, sort: str = "id", page: int = 1,
                 per_page: int | None = None) -> list[dict[str, Any]]:
    """Devices matching the filters, as a list (the shape before filters existed). Without
    ``per_page`` every match is returned; the total is in ``X-Total-Count`` either way.
    Each device carries ``window``: inferences, errors and merged latency percentiles over
    the last 15 minutes (docs/rest-api.md states the merge)."""
    query = DeviceQuery(q=q, group=group, status=status, bundle=bundle, version=version,
                        delegate=delegate, trouble=trouble, sort=sort, page=page,
                        per_page=per_page)
    now = time.time()
    rows, total = services.registry.query_devices(query=query, now=now)
    stats = services.registry.device_window_stats(device_ids=[r["id"] for r in rows],
                                                  since=now - query.window_s)
    response.headers["X-Total-Count"] = str(total)
    response.headers["X-Page"] = str(query.page)
    if query.per_page is not None:
        response.headers["X-Per-Page"] = str(query.per_page)
    return [{**views.device(r), "window": window_view(stats.get(r["id"]), query.window_s)}
            for r in rows]


def window_view(stats: dict[str, Any] | None, window_s: float) -> dict[str, Any]:
    """The ``window`` object of a listed device (zeros when it reported nothing)."""
    stats = stats or {}
    return {"seconds": window_s, "inferences": stats.get("inferences", 0),
            "errors": stats.get("errors", 0), "latency_ms": stats.get("latency_ms"),
            "latency_method": LATENCY_METHOD}


@router.get("/{device_id}")
def get_device(device_id: str, services: ServicesDep, _: AdminDep) -> dict[str, Any]:
    """The device, with ``revoked`` (when and by whom, or null)."""
    device = views.device(services.registry.get_device(device_id=device_id))
    revocation = services.revocations.get(device_id)
    device["revoked"] = None if revocation is None else {
        "revoked_at": revocation.revoked_at, "revoked_by": revocation.revoked_by}
    return device


@router.get("/{device_id}/telemetry")
def device_telemetry(device_id: str, services: ServicesDep, _: AdminDep,
                     limit: Limit = 100) -> list[dict[str, Any]]:
    services.registry.get_device(device_id=device_id)
    return [r["data"] for r in services.registry.list_telemetry(device_id=device_id, limit=limit)]


@router.get("/{device_id}/events")
def device_events(device_id: str, services: ServicesDep, _: AdminDep,
                  limit: Limit = 100) -> list[dict[str, Any]]:
    services.registry.get_device(device_id=device_id)
    return [r["data"] for r in services.registry.list_events(device_id=device_id, limit=limit)]


@router.post("/{device_id}/revoke")
async def revoke(device_id: str, request: Request, services: ServicesDep,
                 actor: AdminDep) -> dict[str, Any]:
    """Cut the device off now: the broker drops and refuses it, the API refuses its
    certificate, its reports stop counting, its key cannot enrol again (docs/security.md)."""
    return await revoke_device(services, device_id=device_id, actor=actor,
                               client=client_address(request))
