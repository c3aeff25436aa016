"""Dependencies shared by the routers, as ``Annotated`` aliases.

Who is calling (``authenticate``): the bootstrap admin token (``admin.token``, the first-start
credential, acts as ``bootstrap-admin``), a scoped API token (``eft_...``, ``token:<name>``),
or a console session cookie (its user, or ``bootstrap-admin`` when the console was entered
with the admin token). What they may do (``require_admin``, the dependency every protected
route takes): the role ``fleet_server.roles.ROUTE_ROLES`` names for the matched route; a route
missing from that table is refused to everyone.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from fleet_server.api.same_origin import require_same_origin
from fleet_server.errors import AuthError, ForbiddenError
from fleet_server.roles import PUBLIC, Role, allows, role_for_request
from fleet_server.services import FleetServices
from fleet_server.users import API_TOKEN_PREFIX, BOOTSTRAP, Principal

SESSION_COOKIE = "edgefleet_session"


def get_services(request: Request) -> FleetServices:
    services: FleetServices = request.app.state.services
    return services


ServicesDep = Annotated[FleetServices, Depends(get_services)]


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def authenticate(request: Request, services: FleetServices) -> Principal:
    """The caller's principal; ``AuthError`` (401) without valid credentials.

    A cookie-authenticated state-changing request must come from this server's own pages
    (``require_same_origin``); a bearer token is not checked, a browser never sends it alone."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        if hmac.compare_digest(token.encode(), services.data_dir.admin_token.encode()):
            return BOOTSTRAP
        principal = services.identity.token_principal(token)
        if principal is None:
            raise AuthError("API token is unknown, expired or revoked"
                            if token.startswith(f"{API_TOKEN_PREFIX}_") else "invalid admin token")
        return principal
    session = services.sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is not None:
        principal = services.session_principal(session)
        if principal is not None:
            require_same_origin(request, behind_tls_proxy=services.settings.behind_tls_proxy)
            return principal
    raise AuthError("missing credentials: send 'Authorization: Bearer <token>'")


def route_role(request: Request) -> Role | str | None:
    path = request.url.path.removeprefix(request.scope.get("root_path", "").rstrip("/"))
    return role_for_request(request.method, path)


def authorize(request: Request, principal: Principal) -> None:
    """``ForbiddenError`` (403) unless ``principal`` holds the role the matched route needs."""
    need = route_role(request)
    if need is None:
        raise ForbiddenError(f"{request.method} {request.url.path} is not in the role table")
    if need != PUBLIC and not allows(principal.role, Role(need)):
        raise ForbiddenError(f"role {principal.role} may not do this: it needs {need}")


def require_principal(request: Request, services: ServicesDep) -> Principal:
    """Authenticate and authorise the caller for the matched route; returns who it is."""
    principal = authenticate(request, services)
    authorize(request, principal)
    request.state.principal = principal
    return principal


def require_admin(request: Request,
                  principal: Annotated[Principal, Depends(require_principal)]) -> str:
    """The acting name (for ``created_by`` and the audit log) of an authorised caller.

    The name is historical: it checks the role the route table asks for, not only admin."""
    return principal.name


AdminDep = Annotated[str, Depends(require_admin)]
"""An authorised caller's name (kept under its old name: every route already takes it)."""
PrincipalDep = Annotated[Principal, Depends(require_principal)]


def audit(request: Request, services: FleetServices, action: str, subject: str,
          detail: dict[str, object] | None = None) -> None:
    """Record a mutating action by the request's authorised principal."""
    principal: Principal | None = getattr(request.state, "principal", None)
    services.audit.record(actor=principal.name if principal else "unknown", action=action,
                          subject=subject, detail=detail, client=client_address(request))
