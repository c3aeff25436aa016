"""The web console: server-rendered Jinja2 pages over the same services as the REST API."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from fleet_server.api import views
from fleet_server.api.deps import ServicesDep, client_address
from fleet_server.api.schemas import EnrolmentTokenIn
from fleet_server.console import humanize
from fleet_server.console.session import Csrf, actor_of, check_csrf, principal_of
from fleet_server.errors import AuthError, FleetError
from fleet_server.roles import Role, allows
from fleet_server.services import FleetServices
from fleet_server.tls import INSECURE_BANNER
from fleet_server.tokens import issue_enrolment_token
from fleet_server.trust import parse_publisher_pem

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def _ts(value: float | None) -> str:
    if not value:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


TEMPLATES.env.filters["ts"] = _ts


def _insecure_transport(request: Request) -> bool:
    """Whether this server runs with ``--insecure`` (every page then shows the banner)."""
    services = getattr(request.app.state, "services", None)
    return services is not None and services.tls is None


TEMPLATES.env.globals["insecure_transport"] = _insecure_transport
TEMPLATES.env.globals["insecure_banner"] = INSECURE_BANNER
TEMPLATES.env.filters.update(humanize.FILTERS)

router = APIRouter(prefix="/console", include_in_schema=False)


_check_csrf = check_csrf  # console.session checks it before any route runs; kept for forms


def _page(request: Request, name: str, csrf: str, services: FleetServices,
          **context: Any) -> HTMLResponse:
    """Render ``name``; ``can('operator')`` in a template says whether the user's role may do
    what needs that role (controls it may not use are not shown)."""
    principal = principal_of(request)

    def can(need: str) -> bool:
        return principal is not None and allows(principal.role, Role(need))

    return TEMPLATES.TemplateResponse(request, name, {
        "logged_in": True, "csrf_token": csrf, "refresh_s": None, "principal": principal,
        "can": can, "message": request.query_params.get("message"), **context})


def _audit(request: Request, services: FleetServices, action: str, subject: str,
           detail: dict[str, Any]) -> None:
    services.audit.record(actor=actor_of(request), action=action, subject=subject,
                          detail=detail, client=client_address(request))


@router.get("/bundles", response_class=HTMLResponse)
def bundles_page(request: Request, services: ServicesDep, csrf: Csrf) -> HTMLResponse:
    return _page(request, "bundles.html", csrf, services,
                 bundles=services.registry.list_bundles(),
                 publishers={p["key_id"]: p["name"] for p in services.registry.list_publishers()})


@router.get("/bundles/{key}", response_class=HTMLResponse)
def bundle_page(key: str, request: Request, services: ServicesDep, csrf: Csrf) -> HTMLResponse:
    bundle = services.registry.find_bundle(key=key)
    try:
        signer = services.registry.get_publisher(key_id=bundle["publisher_key_id"])["name"]
    except FleetError:
        signer = ""
    return _page(request, "bundle.html", csrf, services, bundle=bundle, signer_name=signer,
                 all_bundles=services.registry.list_bundles())


@router.get("/deployments", response_class=HTMLResponse)
def deployments_page(request: Request, services: ServicesDep, csrf: Csrf) -> HTMLResponse:
    deployments = [views.deployment(r) for r in services.registry.list_deployments()]
    return _page(request, "deployments.html", csrf, services, deployments=deployments,
                 all_bundles=services.registry.list_bundles(),
                 refresh_s=services.settings.console_refresh_s)


@router.get("/deployments/{deployment_id}", response_class=HTMLResponse)
def deployment_page(deployment_id: str, request: Request, services: ServicesDep,
                    csrf: Csrf) -> HTMLResponse:
    deployment = views.deployment(services.registry.get_deployment(deployment_id=deployment_id))
    return _page(request, "deployment.html", csrf, services, deployment=deployment,
                 refresh_s=services.settings.console_refresh_s)


@router.post("/deployments")
def deploy_form(request: Request, services: ServicesDep, csrf: Csrf,
                csrf_token: Annotated[str, Form()], bundle: Annotated[str, Form()],
                target_kind: Annotated[str, Form()], target: Annotated[str, Form()]) -> Response:
    _check_csrf(csrf, csrf_token)
    device_id = target.strip() if target_kind == "device" else None
    group = target.strip() if target_kind == "group" else None
    try:
        row = services.deployer.deploy(bundle, device_id, group, created_by=actor_of(request))
    except FleetError as e:
        deployments = [views.deployment(r) for r in services.registry.list_deployments()]
        response = _page(request, "deployments.html", csrf, services, deployments=deployments,
                         all_bundles=services.registry.list_bundles(), error=str(e))
        response.status_code = 422 if not isinstance(e, AuthError) else 401
        return response
    _audit(request, services, "deployment.create", row["id"],
           {"bundle": row["bundle_ref"], "device_id": device_id, "group": group})
    return RedirectResponse(f"/console/deployments/{row['id']}", status_code=303)


@router.get("/admin", response_class=HTMLResponse)
def admin_page(request: Request, services: ServicesDep, csrf: Csrf) -> HTMLResponse:
    return _page(request, "admin.html", csrf, services,
                 publishers=services.registry.list_publishers(),
                 fleet_key_id=services.data_dir.fleet_key_id)


@router.post("/enrolment-tokens", response_class=HTMLResponse)
def token_form(request: Request, services: ServicesDep, csrf: Csrf,
               csrf_token: Annotated[str, Form()],
               group: Annotated[str, Form()] = "default") -> HTMLResponse:
    _check_csrf(csrf, csrf_token)
    body = EnrolmentTokenIn(group=group.strip() or "default")
    token = issue_enrolment_token(services.registry, group=body.group, ttl_s=body.ttl_s,
                                  max_ttl_s=services.settings.max_enrolment_ttl_s,
                                  ca_hash=services.ca.ca_hash())["token"]
    _audit(request, services, "enrolment_token.create", body.group, {})
    return _page(request, "admin.html", csrf, services, new_token=token,
                 publishers=services.registry.list_publishers(),
                 fleet_key_id=services.data_dir.fleet_key_id)


@router.post("/publishers")
def publisher_form(request: Request, services: ServicesDep, csrf: Csrf,
                   csrf_token: Annotated[str, Form()], public_key: Annotated[str, Form()],
                   name: Annotated[str, Form()] = "") -> Response:
    _check_csrf(csrf, csrf_token)
    try:
        key_id, pem = parse_publisher_pem(public_key)
    except FleetError as e:
        response = _page(request, "admin.html", csrf, services, error=str(e),
                         publishers=services.registry.list_publishers(),
                         fleet_key_id=services.data_dir.fleet_key_id)
        response.status_code = 422
        return response
    row = services.registry.add_publisher(key_id=key_id, name=name.strip() or key_id[:12],
                                          pem=pem)
    _audit(request, services, "publisher.add", key_id, {"name": row["name"]})
    return RedirectResponse("/console/admin?message=Publisher+added", status_code=303)
