"""Bundle bytes at content-addressed, immutable URLs: ``GET /api/v1/bundles/by-hash/{sha256}.efb``
(and the deltas the server built: ``.../by-hash/{sha256}.efd``).

The URL names the bytes (their SHA-256), so they never change: a strong ``ETag`` (the hash),
``Cache-Control: ... max-age=31536000, immutable``, ``Range`` (one or several ranges, 206;
416 outside the file), ``If-Range`` and ``If-None-Match`` (304) let any HTTP cache or CDN
serve them. With ``public_bundle_urls`` on, no credentials are asked and the answer is
``public``; off, the caller authenticates as for ``/download`` (a device for the bundle of its
current instruction, or a console user) and the answer is ``private``, which shared caches do
not store. Devices verify every chunk against the signed instruction and the bundle's
signature whatever served it (docs/security.md, "Public bundle URLs").
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from fleet_server.api.deps import ServicesDep
from fleet_server.errors import NotFoundError
from fleet_server.mqtt_bridge import may_fetch
from fleet_server.services import FleetServices

router = APIRouter(prefix="/bundles", tags=["bundles"])

ONE_YEAR_S = 365 * 24 * 3600
_SHA256 = re.compile(r"[0-9a-f]{64}")


def by_hash_path(sha256: str) -> str:
    """The path of a bundle's content-addressed URL below the server's (or a CDN's) origin."""
    return f"/api/v1/bundles/by-hash/{sha256}.efb"


def cache_control(public: bool) -> str:
    return f"{'public' if public else 'private'}, max-age={ONE_YEAR_S}, immutable"


def redirect_to_public(sha256: str, services: FleetServices) -> RedirectResponse:
    """``307`` from the authenticated download route to the content-addressed URL (on
    ``bundle_base_url`` when set); HTTP clients drop credentials on a cross-origin redirect."""
    base = (services.settings.bundle_base_url or "").rstrip("/")
    services.metrics.bundle_http.labels("download", "redirect").inc()
    return RedirectResponse(base + by_hash_path(sha256), status_code=307)


def _etag_matches(header: str, etag: str) -> bool:
    """RFC 9110 weak comparison for If-None-Match: ``*`` or any listed tag, ``W/`` ignored."""
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


@router.head("/by-hash/{sha256}.efb", include_in_schema=False)
@router.get("/by-hash/{sha256}.efb",
            responses={206: {"description": "the ranges asked for"},
                       304: {"description": "If-None-Match matched: unchanged"},
                       404: {"description": "no such bundle (or not this device's)"},
                       416: {"description": "range outside the bundle"}})
def bundle_by_hash(sha256: str, request: Request, services: ServicesDep) -> Response:
    public = _authorize(sha256, request, services, "bundle")
    row = services.registry.find_bundle(key=sha256)
    path = services.data_dir.bundle_path(row["id"])
    if not path.exists():
        raise NotFoundError(f"bytes of bundle {row['ref']} are missing from the store")
    return _immutable(path, row["id"], public, request, services)


@router.head("/by-hash/{sha256}.efd", include_in_schema=False)
@router.get("/by-hash/{sha256}.efd",
            responses={206: {"description": "the ranges asked for"},
                       304: {"description": "If-None-Match matched: unchanged"},
                       404: {"description": "no such delta (or not this device's)"},
                       416: {"description": "range outside the delta"}})
def delta_by_hash(sha256: str, request: Request, services: ServicesDep) -> Response:
    """A delta the server built (docs/mqtt-protocol.md, "Deltas"), on a bundle's terms."""
    public = _authorize(sha256, request, services, "delta")
    path = services.deltas.file(sha256)
    if path is None:
        raise NotFoundError(f"no delta {sha256}")
    return _immutable(path, sha256, public, request, services)


def _authorize(sha256: str, request: Request, services: FleetServices, what: str) -> bool:
    """Whether the answer is public; else the caller must be a device whose current
    instruction names ``sha256`` (bundle, shadow candidate or delta) or a console user."""
    public = services.settings.public_bundle_urls
    if not _SHA256.fullmatch(sha256):
        raise NotFoundError(f"no {what} {sha256[:80]!r}: the name must be a lowercase sha256")
    if not public:
        from fleet_server.api.routes.bundles import device_or_admin

        who = device_or_admin(request, services)
        if who.startswith("device:"):
            device = services.registry.get_device(device_id=who.removeprefix("device:"))
            if not may_fetch(device, sha256):  # its bundle, shadow candidate or delta
                raise NotFoundError(f"no {what} {sha256} for this device")
    return public


def _immutable(path: Path, sha256: str, public: bool, request: Request,
               services: FleetServices) -> Response:
    etag = f'"{sha256}"'
    headers = {"etag": etag, "cache-control": cache_control(public),
               "vary": "Authorization" if not public else "Accept-Encoding"}
    inm = request.headers.get("if-none-match")
    if inm is not None and _etag_matches(inm, etag):
        services.metrics.bundle_http.labels("by_hash", "not_modified").inc()
        return Response(status_code=304, headers=headers)
    response = FileResponse(path, media_type="application/octet-stream", headers=headers)
    kind = "range" if request.headers.get("range") else "full"
    services.metrics.bundle_http.labels("by_hash", kind).inc()
    return response
