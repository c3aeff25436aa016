"""Dependencies shared by the routers, as ``Annotated`` aliases."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from fleet_server.api.same_origin import require_same_origin
from fleet_server.errors import AuthError
from fleet_server.services import FleetServices

SESSION_COOKIE = "edgefleet_session"


def get_services(request: Request) -> FleetServices:
    services: FleetServices = request.app.state.services
    return services


ServicesDep = Annotated[FleetServices, Depends(get_services)]


def require_admin(request: Request, services: ServicesDep) -> str:
    """Bearer admin token or a live console session cookie; returns who is acting.

    A cookie-authenticated state-changing request must come from this server's own pages
    (``require_same_origin``); a bearer token is not checked, a browser never sends it alone."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token:
        if hmac.compare_digest(token.strip().encode(), services.data_dir.admin_token.encode()):
            return "admin"
        raise AuthError("invalid admin token")
    if services.sessions.csrf_for(request.cookies.get(SESSION_COOKIE)) is not None:
        require_same_origin(request, behind_tls_proxy=services.settings.behind_tls_proxy)
        return "console"
    raise AuthError("missing credentials: send 'Authorization: Bearer <admin token>'")


AdminDep = Annotated[str, Depends(require_admin)]
