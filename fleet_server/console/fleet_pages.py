"""Console pages for the fleet: the overview (landing page), the devices list (server-side
filters, search, sort, pages and bulk actions) and one device's page, plus the JSON its
charts read. Same registry queries as GET /api/v1/devices (fleet_server/device_query.py)."""

from __future__ import annotations

import time
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from fleet_server.api import views
from fleet_server.api.deps import ServicesDep, client_address
from fleet_server.api.routes.devices import window_view
from fleet_server.api.routes.rollouts import rollout_view
from fleet_server.audit import from_client
from fleet_server.console.routes import Csrf, _audit, _check_csrf, _page
from fleet_server.console.session import actor_of
from fleet_server.device_query import (
    LATENCY_METHOD,
    SORTS,
    STATUSES,
    TROUBLE_LABELS,
    TROUBLES,
    DeviceQuery,
)
from fleet_server.errors import FleetError, InvalidInputError
from fleet_server.revoke import revoke_device
from fleet_server.services import FleetServices

router = APIRouter(prefix="/console", include_in_schema=False)

PER_PAGE_CHOICES = (25, 50, 100, 200)
ACTIVE_ROLLOUT_STATES = ("running", "paused")
HISTORY_LIMIT = 200
"""Events (install transitions, errors, starts) on a device's page, newest first."""
SERIES_LIMIT = 300
"""Telemetry windows (and shadow reports) the device charts draw, newest last."""


def _publisher_names(services: FleetServices) -> dict[str, str]:
    return {p["key_id"]: p["name"] for p in services.registry.list_publishers()}


@router.get("/", response_class=HTMLResponse)
@router.get("", response_class=HTMLResponse)
def overview_page(request: Request, services: ServicesDep, csrf: Csrf) -> HTMLResponse:
    fleet = services.registry.fleet_overview()
    rollouts = [rollout_view(r) for r in services.rollout_store.list_rollouts(
        states=ACTIVE_ROLLOUT_STATES)]
    return _page(request, "overview.html", csrf, services, fleet=fleet, rollouts=rollouts,
                 trouble_labels=TROUBLE_LABELS, cursor=services.registry.change_cursor())


def _query_from(request: Request) -> DeviceQuery:
    p = request.query_params

    def number(name: str, default: int) -> int:
        raw = p.get(name) or str(default)
        try:
            return int(raw)
        except ValueError as e:
            raise InvalidInputError(f"{name} must be an integer, got {raw!r}") from e

    return DeviceQuery(q=p.get("q"), group=p.get("group"), status=p.get("status"),
                       bundle=p.get("bundle"), version=p.get("version"),
                       delegate=p.get("delegate"), trouble=p.get("trouble"),
                       sort=p.get("sort") or "id", page=number("page", 1),
                       per_page=number("per_page", 50))


def _page_link(query: DeviceQuery, page: int) -> str:
    params = {**query.params(), "page": str(page)}
    if query.per_page != 50:
        params["per_page"] = str(query.per_page)
    return "/console/devices?" + urlencode(params)


@router.get("/devices", response_class=HTMLResponse)
def devices_page(request: Request, services: ServicesDep, csrf: Csrf) -> HTMLResponse:
    error = None
    try:
        query = _query_from(request)
    except InvalidInputError as e:
        query, error = DeviceQuery(), str(e)
    now = time.time()
    rows, total = services.registry.query_devices(query=query, now=now)
    stats = services.registry.device_window_stats(device_ids=[r["id"] for r in rows],
                                                  since=now - query.window_s)
    devices = [{**views.device(r), "window": window_view(stats.get(r["id"]), query.window_s)}
               for r in rows]
    drifted = services.registry.drifted_devices(device_ids=[r["id"] for r in rows], now=now)
    per_page = query.per_page or 50
    pages = max(1, -(-total // per_page))
    fleet = services.registry.device_facets()
    response = _page(
        request, "devices.html", csrf, services, devices=devices, total=total, query=query,
        pages=pages, prev_link=_page_link(query, query.page - 1) if query.page > 1 else None,
        next_link=_page_link(query, query.page + 1) if query.page < pages else None,
        first=(query.page - 1) * per_page + 1, last=(query.page - 1) * per_page + len(devices),
        statuses=STATUSES, troubles=TROUBLES, trouble_labels=TROUBLE_LABELS, sorts=SORTS,
        per_page_choices=PER_PAGE_CHOICES, fleet=fleet, error=error, now=now, drifted=drifted,
        latency_method=LATENCY_METHOD, window_min=int(query.window_s // 60),
        all_bundles=services.registry.list_bundles(), cursor=services.registry.change_cursor())
    if error:
        response.status_code = 422
    return response


@router.post("/devices/bulk")
def bulk_form(request: Request, services: ServicesDep, csrf: Csrf,
              csrf_token: Annotated[str, Form()], action: Annotated[str, Form()],
              bundle: Annotated[str, Form()],
              device: Annotated[list[str] | None, Form()] = None) -> Response:
    """Deploy a bundle to, or start a rollout on, the devices ticked on the list."""
    _check_csrf(csrf, csrf_token)
    ids = sorted({d.strip() for d in device or [] if d.strip()})
    try:
        if not ids:
            raise InvalidInputError("select at least one device first")
        if action == "rollout":
            with from_client(client_address(request)):
                row = services.rollouts.create(bundle=bundle, devices=ids,
                                               actor=actor_of(request))
            return RedirectResponse(f"/console/rollouts/{row['id']}", status_code=303)
        if action != "deploy":
            raise InvalidInputError(f"unknown bulk action {action!r}: deploy or rollout")
        for device_id in ids:  # validate every target before issuing any instruction
            services.registry.get_device(device_id=device_id)
        made = [services.deployer.deploy(bundle, device_id, None,
                                         created_by=actor_of(request))["id"]
                for device_id in ids]
        for deployment_id, device_id in zip(made, ids, strict=True):
            _audit(request, services, "deployment.create", deployment_id,
                   {"bundle": bundle, "device_id": device_id, "bulk": True})
    except FleetError as e:
        return RedirectResponse("/console/devices?" + urlencode({"message": str(e)}),
                                status_code=303)
    message = f"{bundle} deployed to {len(ids)} devices ({made[0]}..{made[-1]})"
    return RedirectResponse("/console/deployments?" + urlencode({"message": message}),
                            status_code=303)


@router.get("/devices/{device_id}", response_class=HTMLResponse)
def device_page(device_id: str, request: Request, services: ServicesDep,
                csrf: Csrf) -> HTMLResponse:
    now = time.time()
    device = views.device(services.registry.get_device(device_id=device_id))
    telemetry = [r["data"] for r in services.registry.list_telemetry(device_id=device_id,
                                                                     limit=20)]
    events = [r["data"] for r in services.registry.list_events(device_id=device_id,
                                                               limit=HISTORY_LIMIT)]
    window = window_view(services.registry.device_window_stats(
        device_ids=[device_id], since=now - 900).get(device_id), 900)
    desired = None
    if device["desired_bundle"]:
        try:
            desired = services.registry.find_bundle(key=device["desired_bundle"])
        except FleetError:
            desired = None
    return _page(request, "device.html", csrf, services, device=device, telemetry=telemetry,
                 events=events, window=window, desired=desired, now=now,
                 latency_method=LATENCY_METHOD, publishers=_publisher_names(services),
                 cursor=services.registry.device_cursor(device_id=device_id),
                 live_device=device_id, revocation=services.revocations.get(device_id))


@router.post("/devices/{device_id}/revoke")
async def revoke_form(device_id: str, request: Request, services: ServicesDep, csrf: Csrf,
                      csrf_token: Annotated[str, Form()],
                      confirm: Annotated[str, Form()] = "") -> Response:
    """Revoke a device (operator); the form must repeat the device id as confirmation."""
    _check_csrf(csrf, csrf_token)
    page = f"/console/devices/{device_id}?"
    if confirm.strip() != device_id:
        return RedirectResponse(page + urlencode({
            "message": f"type {device_id} to confirm the revocation; nothing was revoked"}),
            status_code=303)
    try:
        row = await revoke_device(services, device_id=device_id, actor=actor_of(request),
                                  client=client_address(request))
    except FleetError as e:
        return RedirectResponse(page + urlencode({"message": str(e)}), status_code=303)
    message = f"{device_id} is revoked" + (
        "; disconnected from the broker" if row["disconnected"] else "") + (
        f"; the broker was not told: {row['broker_error']}" if row.get("broker_error") else "")
    return RedirectResponse(page + urlencode({"message": message}), status_code=303)


@router.get("/devices/{device_id}/series.json")
def device_series(device_id: str, services: ServicesDep, csrf: Csrf) -> dict[str, Any]:
    """Chart data for one device: latency percentiles, throughput and errors per telemetry
    window, and PSI per input from its shadow reports (uPlot's column layout: x then ys)."""
    services.registry.get_device(device_id=device_id)
    rows = list(reversed(services.registry.list_telemetry(device_id=device_id,
                                                          limit=SERIES_LIMIT)))
    xs = [float(r["ts"]) for r in rows]

    def col(get: Any) -> list[float | None]:
        out = []
        for r in rows:
            v = get(r["data"])
            out.append(float(v) if isinstance(v, int | float) else None)
        return out

    def lat(key: str) -> list[float | None]:
        return col(lambda d: (d.get("latency_ms") or {}).get(key))

    def rate(d: dict[str, Any]) -> float | None:
        w = d.get("window_s") or 0
        return (d.get("inferences") or 0) / w if w else None

    drift = services.registry.device_drift_series(device_id=device_id, limit=SERIES_LIMIT)
    inputs = sorted({name for r in drift for name in r["psi"]})
    return {
        "latency": {"title": "Latency per telemetry window", "unit": "ms", "x": xs,
                    "series": [{"label": k, "values": lat(k)} for k in ("p50", "p95", "p99")]},
        "throughput": {"title": "Throughput and errors per telemetry window", "unit": "/s",
                       "x": xs, "series": [
                           {"label": "inferences/s", "values": col(rate)},
                           {"label": "errors/s", "values": col(
                               lambda d: (d.get("errors") or 0) / d["window_s"]
                               if d.get("window_s") else None)}]},
        "drift": {"title": "Input drift (PSI per input; 0.2 = drifted)", "unit": "PSI",
                  "x": [r["ts"] for r in drift], "threshold": 0.2,
                  "series": [{"label": name, "values": [r["psi"].get(name) for r in drift]}
                             for name in inputs]},
    }
