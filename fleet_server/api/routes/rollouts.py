"""Rollouts: create a gated staged rollout, follow it, steer it (audit log: routes/audit.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from fleet_server.api.deps import AdminDep, ServicesDep, client_address
from fleet_server.audit import from_client
from fleet_server.errors import NotFoundError
from fleet_server.rollout_store import Row
from fleet_server.rollouts.metrics import comparison

router = APIRouter(tags=["rollouts"])

ACTIONS = ("pause", "resume", "abort", "promote")


class RolloutIn(BaseModel):
    bundle: str = Field(min_length=1, max_length=300)
    group: str | None = Field(default=None, max_length=128)
    devices: list[str] | None = Field(default=None, max_length=100_000)
    plan: dict[str, Any] | None = None


def rollout_view(row: Row, *, detail: bool = False, services: Any = None) -> dict[str, Any]:
    plan = row["plan"]
    idx = int(row["stage_index"])
    out = {
        "id": row["id"], "bundle": row["bundle_ref"], "bundle_id": row["bundle_id"],
        "target": {"kind": row["target_kind"], "value": row["target_value"]},
        "device_count": len(row["devices"]), "state": row["state"], "stage_index": idx,
        "stage": plan["stages"][min(idx, len(plan["stages"]) - 1)]["name"],
        "plan": plan, "created_at": row["created_at"], "created_by": row["created_by"],
        "updated_at": row["updated_at"], "last_evaluation": row["last_evaluation"],
    }
    if detail and services is not None:
        store = services.rollout_store
        devices = store.rollout_devices(rollout_id=row["id"])
        out["devices"] = [
            {"device_id": d["device_id"], "role": d["role"], "stage_index": d["stage_index"],
             "instruction_seq": d["instruction_seq"], "excluded": d["excluded"],
             "previous_bundle_id": d["previous_bundle_id"]} for d in devices.values()]
        out["decisions"] = store.list_decisions(rollout_id=row["id"])
    return out


@router.post("/rollouts", status_code=201)
async def create_rollout(body: RolloutIn, request: Request, services: ServicesDep,
                         who: AdminDep) -> dict[str, Any]:
    with from_client(client_address(request)):  # the driver's audit rows say from where
        row = await run_in_threadpool(services.rollouts.create, bundle=body.bundle,
                                      group=body.group, devices=body.devices, plan=body.plan,
                                      actor=who)
    return rollout_view(row)


@router.get("/rollouts")
def list_rollouts(services: ServicesDep, _: AdminDep) -> list[dict[str, Any]]:
    return [rollout_view(r) for r in services.rollout_store.list_rollouts()]


@router.get("/rollouts/{rollout_id}")
def get_rollout(rollout_id: str, services: ServicesDep, _: AdminDep) -> dict[str, Any]:
    row = services.rollout_store.get_rollout(rollout_id=rollout_id)
    return rollout_view(row, detail=True, services=services)


@router.get("/rollouts/{rollout_id}/comparison")
def get_comparison(rollout_id: str, services: ServicesDep, _: AdminDep) -> dict[str, Any]:
    row = services.rollout_store.get_rollout(rollout_id=rollout_id)
    return comparison(services.rollout_store, row)


@router.post("/rollouts/{rollout_id}/{action}")
async def act(rollout_id: str, action: str, request: Request, services: ServicesDep,
              who: AdminDep) -> dict[str, Any]:
    if action not in ACTIONS:
        raise NotFoundError(f"no rollout action {action!r} (one of {', '.join(ACTIONS)})")
    with from_client(client_address(request)):
        row = await run_in_threadpool(getattr(services.rollouts, action), rollout_id, who)
    return rollout_view(row)
