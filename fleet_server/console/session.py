"""The console's session dependency: a live session, the role the page needs, and the CSRF
token on every state-changing request.

``Csrf`` (the name every console route takes) returns the session's CSRF token for the page's
forms. Before that it checks, in order: a live session (else a redirect to the login page),
the same-origin headers (``api/same_origin.py``), the role the route needs
(``roles.console_role``; 403 otherwise) and, on a POST, the ``csrf_token`` form field
(403 when missing or wrong, before the route runs, so nothing changes).
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from fleet_server.api.deps import SESSION_COOKIE, ServicesDep
from fleet_server.api.same_origin import SAFE_METHODS, require_same_origin
from fleet_server.errors import ForbiddenError
from fleet_server.roles import allows, console_role
from fleet_server.users import Principal


class LoginRequired(Exception):
    """No valid console session: redirect to the login page."""


def check_csrf(expected: str, given: str | None) -> None:
    if not given or not hmac.compare_digest(expected.encode(), given.encode()):
        raise ForbiddenError("CSRF token missing or wrong: reload the page and try again")


async def console_session(request: Request, services: ServicesDep) -> str:
    session = services.sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise LoginRequired()
    principal = services.session_principal(session)
    if principal is None:  # the user was disabled
        services.sessions.drop(session.session_id)
        raise LoginRequired()
    require_same_origin(request, behind_tls_proxy=services.settings.behind_tls_proxy)
    request.state.principal = principal
    route = request.scope.get("route")
    need = console_role(request.method, getattr(route, "path", request.url.path))
    if not allows(principal.role, need):
        raise ForbiddenError(f"role {principal.role} may not do this: it needs {need}")
    if request.method not in SAFE_METHODS:
        form = await request.form()
        given = form.get("csrf_token")
        check_csrf(session.csrf, given if isinstance(given, str) else None)
    return session.csrf


Csrf = Annotated[str, Depends(console_session)]


def principal_of(request: Request) -> Principal | None:
    """The console user of this request (set by ``console_session``)."""
    return getattr(request.state, "principal", None)


def actor_of(request: Request) -> str:
    principal = principal_of(request)
    return principal.name if principal is not None else "console"
