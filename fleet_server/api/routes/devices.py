"""Devices: list, show, telemetry, events."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from fleet_server.api import views
from fleet_server.api.deps import AdminDep, ServicesDep

router = APIRouter(prefix="/devices", tags=["devices"])

Limit = Annotated[int, Query(ge=1, le=1000)]


@router.get("")
def list_devices(services: ServicesDep, _: AdminDep,
                 group: str | None = None) -> list[dict[str, Any]]:
    return [views.device(r) for r in services.registry.list_devices(group=group)]


@router.get("/{device_id}")
def get_device(device_id: str, services: ServicesDep, _: AdminDep) -> dict[str, Any]:
    return views.device(services.registry.get_device(device_id=device_id))


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
