"""``GET /api/v1/audit``: the audit log, newest first, paged by id (operator, admin)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from fleet_server.api.deps import PrincipalDep, ServicesDep

router = APIRouter(tags=["audit"])


class AuditOut(BaseModel):
    id: int
    ts: float
    actor: str
    action: str
    subject: str
    client: str | None
    detail: dict[str, Any]


@router.get("/audit")
def list_audit(services: ServicesDep, _: PrincipalDep,
               limit: Annotated[int, Query(ge=1, le=5000)] = 200,
               before: Annotated[int | None, Query(ge=1, le=2**63 - 1, description=(
                   "only rows with a smaller id: the next page is before=<last id>"))] = None,
               subject: Annotated[str | None, Query(max_length=300)] = None,
               actor: Annotated[str | None, Query(max_length=300)] = None,
               action: Annotated[str | None, Query(max_length=100)] = None) -> list[AuditOut]:
    rows = services.audit.list(limit=limit, before=before, subject=subject, actor=actor,
                               action=action)
    return [AuditOut(**r) for r in rows]
