"""``GET /metrics``: the server's Prometheus metrics (``fleet_server.metrics``).

It takes the admin token like the REST API (``Authorization: Bearer``; in Prometheus
``authorization: {credentials_file: DATA/admin.token}``): the figures describe the fleet.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from fleet_server.api.deps import ServicesDep, require_admin

router = APIRouter(dependencies=[Depends(require_admin)])


@router.get("/metrics", include_in_schema=False)
def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
