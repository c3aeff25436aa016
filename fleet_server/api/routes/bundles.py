"""Bundles: upload (raw body), list, show, download (Range supported)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse

from fleet_server.api import views
from fleet_server.api.deps import AdminDep, ServicesDep
from fleet_server.errors import NotFoundError, PayloadTooLargeError

router = APIRouter(prefix="/bundles", tags=["bundles"])


@router.post(
    "",
    status_code=201,
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {
        "schema": {"type": "string", "format": "binary"}}}, "required": True}},
    responses={200: {"description": "the same bytes were already stored"},
               409: {"description": "same name@version stored with other bytes"},
               413: {"description": "over the upload limit"},
               422: {"description": "not a valid bundle signed by a registered publisher"}},
)
async def upload_bundle(request: Request, services: ServicesDep, _: AdminDep) -> JSONResponse:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > services.settings.max_upload_bytes:
        raise PayloadTooLargeError(
            f"bundle exceeds the upload limit of {services.settings.max_upload_bytes} bytes")
    row, created = await services.bundles.receive(request.stream())
    return JSONResponse(views.bundle_summary(row), status_code=201 if created else 200)


@router.get("")
def list_bundles(services: ServicesDep, _: AdminDep) -> list[dict[str, Any]]:
    return [views.bundle_summary(r) for r in services.registry.list_bundles()]


@router.get("/{key}")
def get_bundle(key: str, services: ServicesDep, _: AdminDep) -> dict[str, Any]:
    """``key`` is the sha256 id or ``name@version``."""
    return views.bundle_detail(services.registry.find_bundle(key=key))


@router.get("/{key}/download")
def download_bundle(key: str, services: ServicesDep, _: AdminDep) -> FileResponse:
    row = services.registry.find_bundle(key=key)
    path = services.data_dir.bundle_path(row["id"])
    if not path.exists():
        raise NotFoundError(f"bytes of bundle {row['ref']} are missing from the store")
    return FileResponse(path, media_type="application/octet-stream",
                        filename=f"{row['name']}-{row['version']}.efb")
