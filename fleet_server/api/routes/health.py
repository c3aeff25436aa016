"""GET /api/v1/health: no auth; tells a probe whether the broker link is up, and with
replicas which one it is, whether it leads, and why it cannot run as a replica."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from fleet_server.api.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/health")
def health(services: ServicesDep) -> dict[str, Any]:
    bridge = services.bridge
    return {"status": "ok", "mqtt_connected": bool(bridge and bridge.connected),
            "fleet_key_id": services.data_dir.fleet_key_id,
            "replica_id": services.settings.replica_id, "leader": services.is_leader(),
            "replica_warning": services.replica_warning}
