"""GET /api/v1/trust/<name>: the fleet's TUF metadata, public (it is signed).

``root.json`` (newest root), ``N.root.json`` (each version, walked by devices),
``timestamp.json``, ``snapshot.json``, ``targets.json`` (re-signed on demand when the
bundle set changed or the timestamp is half way to expiry).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from fleet_server.api.deps import ServicesDep
from fleet_server.errors import NotFoundError

router = APIRouter(tags=["trust"])


@router.get("/trust/{name}")
def trust_metadata(name: str, services: ServicesDep) -> Response:
    data = services.trust.metadata(name, bundles=services.registry.list_bundles())
    if data is None:
        raise NotFoundError(f"no trust metadata {name}")
    return Response(content=data, media_type="application/json",
                    headers={"Cache-Control": "no-store"})
