"""Deployments: send a bundle to a device or a group; follow per-device state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from fleet_server.api import views
from fleet_server.api.deps import AdminDep, ServicesDep, audit
from fleet_server.api.schemas import DeploymentIn

router = APIRouter(prefix="/deployments", tags=["deployments"])


@router.post("", status_code=201)
async def create_deployment(body: DeploymentIn, request: Request, services: ServicesDep,
                            who: AdminDep) -> dict[str, Any]:
    override = body.delegate_override
    row = await run_in_threadpool(
        services.deployer.deploy, body.bundle, body.device_id, body.group, created_by=who,
        delegate_override=override.model_dump() if override is not None else None)
    audit(request, services, "deployment.create", row["id"],
          {"bundle": row["bundle_ref"], "device_id": body.device_id, "group": body.group,
           "delegate_override": body.delegate_override.model_dump()
           if body.delegate_override else None})
    return views.deployment(row)


@router.get("")
def list_deployments(services: ServicesDep, _: AdminDep) -> list[dict[str, Any]]:
    return [views.deployment(r) for r in services.registry.list_deployments()]


@router.get("/{deployment_id}")
def get_deployment(deployment_id: str, services: ServicesDep, _: AdminDep) -> dict[str, Any]:
    return views.deployment(services.registry.get_deployment(deployment_id=deployment_id))


@router.post("/{deployment_id}/cancel")
async def cancel_deployment(deployment_id: str, request: Request, services: ServicesDep,
                            _: AdminDep) -> dict[str, Any]:
    """Cancel on every target not yet finished (a new signed instruction, bundle null)."""
    row = await run_in_threadpool(services.deployer.cancel, deployment_id)
    audit(request, services, "deployment.cancel", deployment_id, {})
    return views.deployment(row)
