"""The web console: server-rendered Jinja2 pages over the same services as the REST API."""

from __future__ import annotations

import hmac
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from fleet_server.api import views
from fleet_server.api.deps import SESSION_COOKIE, ServicesDep
from fleet_server.api.same_origin import require_same_origin
from fleet_server.api.schemas import EnrolmentTokenIn
from fleet_server.errors import AuthError, FleetError
from fleet_server.services import FleetServices
from fleet_server.tokens import issue_enrolment_token
from fleet_server.trust import parse_publisher_pem

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def _ts(value: float | None) -> str:
    if not value:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


TEMPLATES.env.filters["ts"] = _ts

router = APIRouter(prefix="/console", include_in_schema=False)


class LoginRequired(Exception):
    """No valid console session: redirect to the login page."""


def _csrf(request: Request, services: ServicesDep) -> str:
    csrf = services.sessions.csrf_for(request.cookies.get(SESSION_COOKIE))
    if csrf is None:
        raise LoginRequired()
    require_same_origin(request, behind_tls_proxy=services.settings.behind_tls_proxy)
    return csrf


Csrf = Annotated[str, Depends(_csrf)]


def _check_csrf(expected: str, given: str) -> None:
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise AuthError("CSRF token mismatch: reload the page and try again")


def _page(request: Request, name: str, csrf: str, services: FleetServices,
          **context: Any) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, name, {
        "logged_in": True, "csrf_token": csrf, "refresh_s": None,
        "message": request.query_params.get("message"), **context})


@router.get("/", include_in_schema=False)
@router.get("", include_in_schema=False)
def console_home() -> RedirectResponse:
    return RedirectResponse("/console/devices", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "login.html", {"logged_in": False})


@router.post("/login")
def login(request: Request, services: ServicesDep,
          token: Annotated[str, Form()]) -> Response:
    require_same_origin(request, behind_tls_proxy=services.settings.behind_tls_proxy)
    if not hmac.compare_digest(token.strip().encode(), services.data_dir.admin_token.encode()):
        return TEMPLATES.TemplateResponse(
            request, "login.html", {"logged_in": False, "error": "Wrong admin token."},
            status_code=401)
    session_id, _ = services.sessions.create()
    response = RedirectResponse("/console/devices", status_code=303)
    secure = services.settings.behind_tls_proxy or request.url.scheme == "https"
    response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="strict",
                        secure=secure, max_age=services.settings.session_ttl_s, path="/")
    return response


@router.post("/logout")
def logout(request: Request, services: ServicesDep, csrf: Csrf,
           csrf_token: Annotated[str, Form()]) -> Response:
    _check_csrf(csrf, csrf_token)
    services.sessions.drop(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/devices", response_class=HTMLResponse)
def devices_page(request: Request, services: ServicesDep, csrf: Csrf) -> HTMLResponse:
    devices = [views.device(r) for r in services.registry.list_devices()]
    return _page(request, "devices.html", csrf, services, devices=devices,
                 refresh_s=services.settings.console_refresh_s)


HISTORY_LIMIT = 200
"""Events (install transitions, errors, starts) on a device's page, newest first."""


@router.get("/devices/{device_id}", response_class=HTMLResponse)
def device_page(device_id: str, request: Request, services: ServicesDep,
                csrf: Csrf) -> HTMLResponse:
    device = views.device(services.registry.get_device(device_id=device_id))
    telemetry = [r["data"] for r in services.registry.list_telemetry(device_id=device_id,
                                                                     limit=20)]
    events = [r["data"] for r in services.registry.list_events(device_id=device_id,
                                                               limit=HISTORY_LIMIT)]
    return _page(request, "device.html", csrf, services, device=device, telemetry=telemetry,
                 events=events, refresh_s=services.settings.console_refresh_s)


@router.get("/bundles", response_class=HTMLResponse)
def bundles_page(request: Request, services: ServicesDep, csrf: Csrf) -> HTMLResponse:
    return _page(request, "bundles.html", csrf, services,
                 bundles=services.registry.list_bundles())


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
        row = services.deployer.deploy(bundle, device_id, group, created_by="console")
    except FleetError as e:
        deployments = [views.deployment(r) for r in services.registry.list_deployments()]
        response = _page(request, "deployments.html", csrf, services, deployments=deployments,
                         all_bundles=services.registry.list_bundles(), error=str(e))
        response.status_code = 422 if not isinstance(e, AuthError) else 401
        return response
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
                                  max_ttl_s=services.settings.max_enrolment_ttl_s)["token"]
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
    services.registry.add_publisher(key_id=key_id, name=name.strip() or key_id[:12], pem=pem)
    return RedirectResponse("/console/admin?message=Publisher+added", status_code=303)
