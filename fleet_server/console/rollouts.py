"""Console pages for rollouts (list, create, steer, compare), device telemetry over time and
the audit log. Same services and driver as the REST API; the charts are uPlot specs
(``rollout_charts``) drawn by ``static/charts.js`` through ``templates/_chart.html``."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from fleet_server.api.deps import ServicesDep, client_address
from fleet_server.api.routes.rollouts import ACTIONS, rollout_view
from fleet_server.audit import from_client
from fleet_server.console import rollout_charts
from fleet_server.console.routes import Csrf, _check_csrf, _page
from fleet_server.console.session import actor_of
from fleet_server.errors import FleetError, NotFoundError
from fleet_server.rollouts.metrics import comparison
from fleet_server.rollouts.plan import default_plan

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("/rollouts", response_class=HTMLResponse)
def rollouts_page(request: Request, services: ServicesDep, csrf: Csrf) -> HTMLResponse:
    rows = [rollout_view(r) for r in services.rollout_store.list_rollouts()]
    return _page(request, "rollouts.html", csrf, services, rollouts=rows,
                 all_bundles=services.registry.list_bundles(),
                 default_plan=json.dumps(default_plan().to_dict(), indent=1),
                 refresh_s=services.settings.console_refresh_s)


@router.post("/rollouts")
def create_form(request: Request, services: ServicesDep, csrf: Csrf,
                csrf_token: Annotated[str, Form()], bundle: Annotated[str, Form()],
                target_kind: Annotated[str, Form()], target: Annotated[str, Form()],
                plan: Annotated[str, Form()] = "") -> Response:
    _check_csrf(csrf, csrf_token)
    try:
        try:
            plan_obj = json.loads(plan) if plan.strip() else None
        except ValueError as e:
            raise NotFoundError(f"plan is not JSON: {e}") from e
        with from_client(client_address(request)):
            if target_kind == "group":
                row = services.rollouts.create(bundle=bundle, group=target.strip(),
                                               plan=plan_obj, actor=actor_of(request))
            else:
                ids = [d.strip() for d in target.split(",") if d.strip()]
                row = services.rollouts.create(bundle=bundle, devices=ids, plan=plan_obj,
                                               actor=actor_of(request))
    except FleetError as e:
        response = _page(request, "rollouts.html", csrf, services, error=str(e),
                         rollouts=[rollout_view(r) for r in
                                   services.rollout_store.list_rollouts()],
                         all_bundles=services.registry.list_bundles(),
                         default_plan=plan or json.dumps(default_plan().to_dict(), indent=1))
        response.status_code = 422
        return response
    return RedirectResponse(f"/console/rollouts/{row['id']}", status_code=303)


@router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
def rollout_page(rollout_id: str, request: Request, services: ServicesDep,
                 csrf: Csrf) -> HTMLResponse:
    row = services.rollout_store.get_rollout(rollout_id=rollout_id)
    view = rollout_view(row, detail=True, services=services)
    roles: dict[str, int] = {}
    for d in view["devices"]:
        key = d["role"] + (" (excluded)" if d["excluded"] else "")
        roles[key] = roles.get(key, 0) + 1
    return _page(request, "rollout.html", csrf, services, r=view, roles=roles,
                 actions=ACTIONS, refresh_s=2 if row["state"] == "running" else None,
                 progress=rollout_charts.progress_over_time(view["decisions"], view["plan"]),
                 intervals=_interval_charts(services.rollout_store.gate_history(
                     rollout_id=rollout_id), view["plan"]))


def _interval_charts(history: list[dict[str, Any]], plan: dict[str, Any]) -> list[dict[str, Any]]:
    """One chart per (stage, sequential gate): its interval over time, its two lines, and
    when it decided (the first stored interval whose decision is not ``continue``)."""
    series: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for h in history:
        series.setdefault((int(h["stage_index"]), str(h["gate"])), []).append(h)
    out = []
    for (idx, gate), rows in sorted(series.items()):
        stage = plan["stages"][idx]["name"] if idx < len(plan["stages"]) else str(idx)
        out.append({
            "stage": stage, "stage_index": idx, "gate": gate, "last": rows[-1],
            "decided": next((h for h in rows if h["decision"] != "continue"), None),
            "points": len(rows), "spec": rollout_charts.interval_over_time(rows, gate=gate)})
    return out


@router.post("/rollouts/{rollout_id}/{action}")
def action_form(rollout_id: str, action: str, request: Request, services: ServicesDep,
                csrf: Csrf, csrf_token: Annotated[str, Form()]) -> Response:
    _check_csrf(csrf, csrf_token)
    if action not in ACTIONS:
        raise NotFoundError(f"no rollout action {action!r}")
    try:
        with from_client(client_address(request)):
            getattr(services.rollouts, action)(rollout_id, actor_of(request))
        message = f"{action}: done"
    except FleetError as e:
        message = str(e)
    return RedirectResponse(f"/console/rollouts/{rollout_id}?message={message}",
                            status_code=303)


@router.get("/rollouts/{rollout_id}/compare", response_class=HTMLResponse)
def compare_page(rollout_id: str, request: Request, services: ServicesDep,
                 csrf: Csrf) -> HTMLResponse:
    row = services.rollout_store.get_rollout(rollout_id=rollout_id)
    c = comparison(services.rollout_store, row)
    reports = services.rollout_store.shadow_reports(
        candidate_sha256=row["bundle_id"], device_ids=list(row["devices"]),
        since=float(row["created_at"]))
    shadow = next((s for s in row["plan"]["stages"] if s["kind"] == "shadow"), None)
    step, figures = rollout_charts.shadow_over_time(reports, shadow["gates"] if shadow else {})
    return _page(request, "rollout_compare.html", csrf, services, r=rollout_view(row), c=c,
                 figures=figures, step=step)


@router.get("/devices/{device_id}/telemetry", response_class=HTMLResponse)
def device_telemetry_page(device_id: str, request: Request, services: ServicesDep,
                          csrf: Csrf) -> HTMLResponse:
    """The device's charts at full width (data from ``/console/devices/ID/series.json``)."""
    services.registry.get_device(device_id=device_id)
    rows = services.rollout_store.device_telemetry_series(device_id=device_id, limit=300)
    return _page(request, "device_telemetry.html", csrf, services, device_id=device_id,
                 count=len(rows), refresh_s=services.settings.console_refresh_s)


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, services: ServicesDep, csrf: Csrf,
               before: int | None = None) -> HTMLResponse:
    """The newest ``AUDIT_PAGE`` rows; "older" pages on by id (as ``GET /api/v1/audit``)."""
    entries: list[dict[str, Any]] = services.audit.list(limit=AUDIT_PAGE, before=before)
    older = entries[-1]["id"] if len(entries) == AUDIT_PAGE else None
    return _page(request, "audit.html", csrf, services, entries=entries, older=older)


AUDIT_PAGE = 200
