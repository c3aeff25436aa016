"""Bundles: upload (raw body), list, show, download (Range supported)."""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from fleet_server.api import views
from fleet_server.api.deps import AdminDep, ServicesDep, audit, require_principal
from fleet_server.api.routes.bundle_blobs import redirect_to_public
from fleet_server.errors import AuthError, NotFoundError, PayloadTooLargeError
from fleet_server.mqtt_bridge import may_fetch
from fleet_server.registry import hash_secret

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
    audit(request, services, "bundle.upload", row["ref"],
          {"id": row["id"], "created": created})
    return JSONResponse(views.bundle_summary(row), status_code=201 if created else 200)


@router.get("")
def list_bundles(services: ServicesDep, _: AdminDep) -> list[dict[str, Any]]:
    return [views.bundle_summary(r) for r in services.registry.list_bundles()]


@router.get("/{key}")
def get_bundle(key: str, services: ServicesDep, _: AdminDep) -> dict[str, Any]:
    """``key`` is the sha256 id or ``name@version``."""
    return views.bundle_detail(services.registry.find_bundle(key=key))


def device_or_admin(request: Request, services: ServicesDep) -> str:
    """HTTP basic ``device id : MQTT secret`` (checked against the registry's hash), else the
    admin credentials; returns ``device:<id>`` or who the admin is."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return require_principal(request, services).name
    try:
        device_id, sep, secret = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError) as e:
        raise AuthError("malformed basic credentials") from e
    stored = services.registry.device_secret_hash(device_id=device_id) if sep else None
    if stored is None or not hmac.compare_digest(stored, hash_secret(secret)):
        raise AuthError("invalid device credentials")
    if services.revocations.is_revoked(device_id):
        raise AuthError(f"device {device_id} is revoked")
    return f"device:{device_id}"


@router.get("/{key}/download", response_model=None)
def download_bundle(key: str, services: ServicesDep,
                    who: Annotated[str, Depends(device_or_admin)]
                    ) -> FileResponse | RedirectResponse:
    """Range requests supported. A device may fetch only the bundle or the shadow candidate
    of its current instruction (as for chunks over MQTT); anything else is a 404, as if absent. With
    ``public_bundle_urls`` a device is redirected to the content-addressed URL."""
    row = services.registry.find_bundle(key=key)
    if who.startswith("device:"):
        device = services.registry.get_device(device_id=who.removeprefix("device:"))
        if not may_fetch(device, row["id"]):  # its bundle or its shadow candidate
            raise NotFoundError(f"no bundle {key} for this device")
        if services.settings.public_bundle_urls:
            return redirect_to_public(row["id"], services)
    path = services.data_dir.bundle_path(row["id"])
    if not path.exists():
        raise NotFoundError(f"bytes of bundle {row['ref']} are missing from the store")
    return FileResponse(path, media_type="application/octet-stream",
                        filename=f"{row['name']}-{row['version']}.efb")
