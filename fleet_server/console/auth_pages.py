"""Console login (user name + password, or the bootstrap admin token), logout, and the
admin's page for users and API tokens. Logins are rate-limited per client address and per
user name (429 with Retry-After)."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from fleet_server.api.deps import SESSION_COOKIE, ServicesDep, client_address
from fleet_server.api.errors import status_for
from fleet_server.api.same_origin import require_same_origin
from fleet_server.console.routes import TEMPLATES, _audit, _page
from fleet_server.console.session import Csrf
from fleet_server.errors import FleetError
from fleet_server.roles import ROLE_NAMES
from fleet_server.services import FleetServices
from fleet_server.users import BOOTSTRAP, Principal

router = APIRouter(prefix="/console", include_in_schema=False)


def _login_page(request: Request, status: int = 200, error: str | None = None,
                headers: dict[str, str] | None = None) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "login.html", {"logged_in": False, "error": error},
                                      status_code=status, headers=headers)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> HTMLResponse:
    return _login_page(request)


@router.post("/login")
def login(request: Request, services: ServicesDep, username: Annotated[str, Form()] = "",
          password: Annotated[str, Form()] = "", token: Annotated[str, Form()] = "") -> Response:
    require_same_origin(request, behind_tls_proxy=services.settings.behind_tls_proxy)
    address = client_address(request) or "unknown"
    username = username.strip().lower()[:128]  # names are at most 64: a longer one fails
    wait = services.login_limiter.retry_after(address=address, username=username)
    if wait:
        return _login_page(request, 429, f"Too many login attempts: try again in {wait} s.",
                           headers={"Retry-After": str(wait)})
    services.login_limiter.attempt(address=address)
    principal: Principal | None = None
    if token.strip():
        if hmac.compare_digest(token.strip().encode(), services.data_dir.admin_token.encode()):
            principal = BOOTSTRAP
    elif username and password:
        principal = services.identity.authenticate(username=username, password=password)
    if principal is None:
        services.login_limiter.failed(username=username)
        services.audit.record(actor=username or "admin-token", action="login.failed",
                              subject=username or "admin-token", detail={}, client=address)
        return _login_page(request, 401, "Wrong admin token." if token.strip()
                           else "Wrong user name or password, or the user is disabled.")
    session = services.sessions.create(principal)
    services.audit.record(actor=principal.name, action="login", subject=principal.name,
                          detail={"role": principal.role.value}, client=address)
    response = RedirectResponse("/console/", status_code=303)
    secure = services.settings.behind_tls_proxy or request.url.scheme == "https"
    response.set_cookie(SESSION_COOKIE, session.session_id, httponly=True, samesite="strict",
                        secure=secure, max_age=services.settings.session_ttl_s, path="/")
    return response


@router.post("/logout")
def logout(request: Request, services: ServicesDep, csrf: Csrf) -> Response:
    """Deletes the session on the server: the old cookie is refused from now on."""
    services.sessions.drop(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _users_page(request: Request, services: FleetServices, csrf: str,
                **context: Any) -> HTMLResponse:
    return _page(request, "users.html", csrf, services, users=services.identity.list_users(),
                 tokens=services.identity.list_tokens(), roles=ROLE_NAMES, **context)


def _refused(request: Request, services: FleetServices, csrf: str, e: FleetError) -> Response:
    response = _users_page(request, services, csrf, error=str(e))
    response.status_code = status_for(e)
    return response


@router.get("/users", response_class=HTMLResponse)
def users_page(request: Request, services: ServicesDep, csrf: Csrf) -> HTMLResponse:
    return _users_page(request, services, csrf)


@router.post("/users")
def add_user_form(request: Request, services: ServicesDep, csrf: Csrf,
                  username: Annotated[str, Form()], password: Annotated[str, Form()],
                  role: Annotated[str, Form()]) -> Response:
    try:
        services.identity.add_user(username=username.strip(), password=password, role=role,
                                   created_by=request.state.principal.name)
    except FleetError as e:
        return _refused(request, services, csrf, e)
    _audit(request, services, "user.add", username.strip(), {"role": role})
    return RedirectResponse("/console/users?message=User+added", status_code=303)


@router.post("/users/{username}")
def update_user_form(username: str, request: Request, services: ServicesDep, csrf: Csrf,
                     role: Annotated[str, Form()] = "",
                     disabled: Annotated[str, Form()] = "") -> Response:
    """``role`` sets the role; ``disabled`` = ``1`` disables (ending the user's sessions),
    ``0`` enables."""
    flag = {"1": True, "0": False}.get(disabled)
    try:
        services.identity.update_user(username=username, role=role or None, disabled=flag)
    except FleetError as e:
        return _refused(request, services, csrf, e)
    if flag:
        services.sessions.drop_user(username)
    detail: dict[str, Any] = {k: v for k, v in (("role", role or None), ("disabled", flag))
                              if v is not None}
    _audit(request, services, "user.update", username, detail)
    return RedirectResponse("/console/users?message=User+updated", status_code=303)


@router.post("/tokens", response_class=HTMLResponse)
def create_token_form(request: Request, services: ServicesDep, csrf: Csrf,
                      name: Annotated[str, Form()], role: Annotated[str, Form()],
                      expires_in_days: Annotated[float, Form()] = 90) -> Response:
    try:
        secret, row = services.identity.create_token(
            name=name, role=role, ttl_s=expires_in_days * 86400,
            created_by=request.state.principal.name)
    except FleetError as e:
        return _refused(request, services, csrf, e)
    _audit(request, services, "token.create", row["id"],
           {"name": row["name"], "role": row["role"], "expires_at": row["expires_at"]})
    return _users_page(request, services, csrf, new_token=secret, new_token_row=row)


@router.post("/tokens/{token_id}/revoke")
def revoke_token_form(token_id: str, request: Request, services: ServicesDep,
                      csrf: Csrf) -> Response:
    try:
        row = services.identity.revoke_token(token_id=token_id)
    except FleetError as e:
        return _refused(request, services, csrf, e)
    _audit(request, services, "token.revoke", token_id, {"name": row["name"]})
    return RedirectResponse("/console/users?message=Token+revoked", status_code=303)
