"""Roles and the one table of which role each route needs (pure: no I/O, no FastAPI).

``viewer`` reads everything; ``publisher`` also uploads bundles and registers publisher keys;
``operator`` also deploys, rolls out, cancels, revokes devices and mints enrolment tokens;
``admin`` also manages users, API tokens and trust, and may do everything the others may. The order is
partial: admin ⊇ operator ⊇ viewer and admin ⊇ publisher ⊇ viewer, while operator and
publisher are not comparable.

``ROUTE_ROLES`` maps every REST route (method, path template as FastAPI spells it) to the
role it needs, or ``PUBLIC``. A route that is missing is refused to everyone
(``required_role`` returns None) and ``tests/identity/test_role_matrix.py`` fails, so a new
route cannot ship without a decision. Console pages follow ``CONSOLE_ROLES``; a console page
not listed needs ``viewer`` to read and ``admin`` to post.
"""

from __future__ import annotations

import re
from enum import StrEnum


class Role(StrEnum):
    VIEWER = "viewer"
    PUBLISHER = "publisher"
    OPERATOR = "operator"
    ADMIN = "admin"


PUBLIC = "public"
"""No credentials needed (health, device enrolment, signed TUF metadata)."""

GRANTS: dict[Role, frozenset[Role]] = {
    Role.VIEWER: frozenset({Role.VIEWER}),
    Role.PUBLISHER: frozenset({Role.PUBLISHER, Role.VIEWER}),
    Role.OPERATOR: frozenset({Role.OPERATOR, Role.VIEWER}),
    Role.ADMIN: frozenset(Role),
}
"""Which roles' rights each role holds."""

ROLE_NAMES = tuple(r.value for r in Role)

API = "/api/v1"
ROUTE_ROLES: dict[tuple[str, str], Role | str] = {
    ("GET", f"{API}/health"): PUBLIC,
    ("POST", f"{API}/enrol"): PUBLIC,
    ("GET", f"{API}/trust/{{name}}"): PUBLIC,
    ("GET", f"{API}/ca"): PUBLIC,  # the fleet CA bundle: public, pinned by hash
    ("POST", f"{API}/devices/{{device_id}}/certificate"): PUBLIC,  # the device's own certificate
    ("GET", f"{API}/me"): Role.VIEWER,
    ("GET", "/metrics"): Role.VIEWER,
    # bundles and publisher keys
    ("GET", f"{API}/bundles"): Role.VIEWER,
    ("GET", f"{API}/bundles/{{key}}"): Role.VIEWER,
    ("GET", f"{API}/bundles/{{key}}/download"): Role.VIEWER,  # or the device's own credentials
    ("GET", f"{API}/bundles/by-hash/{{sha256}}.efb"): Role.VIEWER,  # or a device; or PUBLIC
    ("GET", f"{API}/bundles/by-hash/{{sha256}}.efd"): Role.VIEWER,  # a delta; as .efb
    ("POST", f"{API}/bundles"): Role.PUBLISHER,
    ("GET", f"{API}/publishers"): Role.VIEWER,
    ("POST", f"{API}/publishers"): Role.PUBLISHER,
    # devices
    ("GET", f"{API}/devices"): Role.VIEWER,
    ("GET", f"{API}/devices/{{device_id}}"): Role.VIEWER,
    ("GET", f"{API}/devices/{{device_id}}/telemetry"): Role.VIEWER,
    ("GET", f"{API}/devices/{{device_id}}/events"): Role.VIEWER,
    ("POST", f"{API}/enrolment-tokens"): Role.OPERATOR,
    ("POST", f"{API}/devices/{{device_id}}/revoke"): Role.OPERATOR,
    # deployments and rollouts
    ("GET", f"{API}/deployments"): Role.VIEWER,
    ("GET", f"{API}/deployments/{{deployment_id}}"): Role.VIEWER,
    ("POST", f"{API}/deployments"): Role.OPERATOR,
    ("POST", f"{API}/deployments/{{deployment_id}}/cancel"): Role.OPERATOR,
    ("GET", f"{API}/rollouts"): Role.VIEWER,
    ("GET", f"{API}/rollouts/{{rollout_id}}"): Role.VIEWER,
    ("GET", f"{API}/rollouts/{{rollout_id}}/comparison"): Role.VIEWER,
    ("POST", f"{API}/rollouts"): Role.OPERATOR,
    ("POST", f"{API}/rollouts/{{rollout_id}}/{{action}}"): Role.OPERATOR,
    # people, tokens and the audit log
    ("GET", f"{API}/audit"): Role.OPERATOR,
    ("GET", f"{API}/users"): Role.ADMIN,
    ("POST", f"{API}/users"): Role.ADMIN,
    ("PATCH", f"{API}/users/{{username}}"): Role.ADMIN,
    ("GET", f"{API}/tokens"): Role.ADMIN,
    ("POST", f"{API}/tokens"): Role.ADMIN,
    ("DELETE", f"{API}/tokens/{{token_id}}"): Role.ADMIN,
}

CONSOLE_ROLES: dict[tuple[str, str], Role] = {
    ("GET", "/console/audit"): Role.OPERATOR,
    ("GET", "/console/users"): Role.ADMIN,
    ("POST", "/console/logout"): Role.VIEWER,
    ("POST", "/console/deployments"): Role.OPERATOR,
    ("POST", "/console/devices/bulk"): Role.OPERATOR,
    ("POST", "/console/rollouts"): Role.OPERATOR,
    ("POST", "/console/rollouts/{rollout_id}/{action}"): Role.OPERATOR,
    ("POST", "/console/enrolment-tokens"): Role.OPERATOR,
    ("POST", "/console/devices/{device_id}/revoke"): Role.OPERATOR,
    ("POST", "/console/publishers"): Role.PUBLISHER,
}
"""Console routes whose role differs from the default (viewer to read, admin to post)."""


def parse_role(value: str) -> Role:
    """The role named ``value``; ValueError naming the valid ones otherwise."""
    try:
        return Role(value)
    except ValueError:
        raise ValueError(f"unknown role {value!r}: one of {', '.join(ROLE_NAMES)}") from None


def allows(have: Role, need: Role) -> bool:
    """Whether a holder of ``have`` may do what needs ``need``."""
    return need in GRANTS[have]


def required_role(method: str, path: str) -> Role | str | None:
    """The role a REST route needs, ``PUBLIC``, or None when the route is not in the table."""
    return ROUTE_ROLES.get((method.upper(), path))


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts))


_PATTERNS = [(method, template, _pattern(template)) for method, template in ROUTE_ROLES]


def role_for_request(method: str, path: str) -> Role | str | None:
    """The role a concrete request path needs: the table's template that matches it (the most
    specific one, the one with the most literal characters), None when none does."""
    method = "GET" if method.upper() == "HEAD" else method.upper()
    best: tuple[int, str] | None = None
    for m, template, pattern in _PATTERNS:
        if m == method and pattern.fullmatch(path):
            literal = len(re.sub(r"\{[^}]+\}", "", template))
            if best is None or literal > best[0]:
                best = (literal, template)
    return None if best is None else ROUTE_ROLES[(method, best[1])]


def console_role(method: str, path: str) -> Role:
    """The role a console route needs (default: viewer for GET, admin for anything else)."""
    method = method.upper()
    default = Role.VIEWER if method in ("GET", "HEAD") else Role.ADMIN
    return CONSOLE_ROLES.get((method, path), default)
