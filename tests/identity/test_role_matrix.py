"""Every route of the OpenAPI schema, called as each role, as the bootstrap admin and with no
credentials: 401 without credentials, 403 for a role below the one ``ROUTE_ROLES`` names,
never 401/403 for a role that holds it. The cases come from ``app.openapi()``, so a new
route is tested the day it is added, and a route missing from the role table fails here."""

from __future__ import annotations

from typing import Any

import pytest

from fleet_server.roles import PUBLIC, ROLE_NAMES, ROUTE_ROLES, Role, allows

from .conftest import Rig

PATH_VALUES = {
    "name": "root.json", "key": "sample@1.0.0", "device_id": "dev-1",
    "deployment_id": "dep-nosuch", "rollout_id": "ro-nosuch", "action": "pause",
    "username": "matrix-user", "token_id": "tok_000000000000", "sha256": "0" * 64,
}
PUB = ("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEATNlciZoake/5wrfKRMea6SL/"
       "Poq7WEDQcdw+G5fey4Q=\n-----END PUBLIC KEY-----\n")
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/v1/enrol"): {"json": {"token": "efe_not-a-token", "device_id": "dev-9",
                                         "public_key": PUB}},
    ("POST", "/api/v1/enrolment-tokens"): {"json": {"group": "lab"}},
    ("POST", "/api/v1/bundles"): {"content": b"not a bundle",
                                  "headers": {"content-type": "application/octet-stream"}},
    ("POST", "/api/v1/publishers"): {"json": {"public_key": PUB, "name": "matrix"}},
    ("POST", "/api/v1/deployments"): {"json": {"bundle": "sample@1.0.0", "device_id": "dev-1"}},
    ("POST", "/api/v1/deployments/{deployment_id}/cancel"): {},
    ("POST", "/api/v1/rollouts"): {"json": {"bundle": "sample@1.0.0", "group": "lab"}},
    ("POST", "/api/v1/rollouts/{rollout_id}/{action}"): {},
    ("POST", "/api/v1/users"): {"json": {"username": "new-user", "password": "x" * 16,
                                         "role": "viewer"}},
    ("PATCH", "/api/v1/users/{username}"): {"json": {"role": "viewer"}},
    ("POST", "/api/v1/tokens"): {"json": {"name": "matrix", "role": "viewer"}},
    ("DELETE", "/api/v1/tokens/{token_id}"): {},
    ("POST", "/api/v1/devices/{device_id}/revoke"): {},
    ("POST", "/api/v1/devices/{device_id}/certificate"): {"json": {"certificate": "x",
                                                                   "csr": "y"}},
}
CALLERS = ("anonymous", "bootstrap", *ROLE_NAMES)


def schema_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every operation; HEAD is checked as the GET it mirrors."""
    methods = {"get": "GET", "head": "GET", "post": "POST", "put": "PUT", "patch": "PATCH",
               "delete": "DELETE"}
    return sorted({(methods[m], path) for path, item in app.openapi()["paths"].items()
                   for m in item if m in methods})


def expected(route_role: Role | str, caller: str) -> str:
    if route_role == PUBLIC:
        return "not-401"
    if caller == "anonymous":
        return "401"
    have = Role.ADMIN if caller == "bootstrap" else Role(caller)
    return "allowed" if allows(have, Role(route_role)) else "403"


def test_every_schema_route_is_in_the_role_table(rig: Rig) -> None:
    routes = schema_routes(rig.app)
    assert len(routes) >= 25
    missing = [r for r in routes if r not in ROUTE_ROLES]
    assert missing == [], f"routes with no role in fleet_server.roles.ROUTE_ROLES: {missing}"
    stale = [r for r in ROUTE_ROLES if r not in routes and r != ("GET", "/metrics")]
    assert stale == [], f"ROUTE_ROLES names routes the app does not have: {stale}"
    bodies = [r for r in routes if r[0] != "GET" and r not in BODIES]
    assert bodies == [], f"add a request for these routes to BODIES: {bodies}"


def test_role_matrix_over_every_route(rig: Rig) -> None:
    rig.client.post("/api/v1/users", headers=rig.auth("bootstrap"), json={
        "username": "matrix-user", "password": "y" * 16, "role": "viewer"})
    routes = [*schema_routes(rig.app), ("GET", "/metrics")]
    failures, calls = [], 0
    for method, template in routes:
        path = template.format(**{k: v for k, v in PATH_VALUES.items() if f"{{{k}}}" in template})
        request = BODIES.get((method, template), {})
        for caller in CALLERS:
            headers = {**request.get("headers", {}), **rig.auth(caller)}
            r = rig.client.request(method, path, headers=headers, json=request.get("json"),
                                   content=request.get("content"))
            calls += 1
            want = expected(ROUTE_ROLES[(method, template)], caller)
            ok = {"401": r.status_code == 401, "403": r.status_code == 403,
                  "not-401": r.status_code != 401,
                  "allowed": r.status_code not in (401, 403) and r.status_code < 500}[want]
            if not ok:
                failures.append(f"{method} {path} as {caller}: {r.status_code} "
                                f"(want {want}) {r.text[:120]}")
    assert failures == [], "\n".join(failures)
    assert calls == len(routes) * len(CALLERS)


@pytest.mark.parametrize("caller", ["viewer", "publisher"])
def test_a_refused_deploy_changes_nothing_and_names_the_role(rig: Rig, caller: str) -> None:
    r = rig.client.post("/api/v1/deployments", headers=rig.auth(caller),
                        json={"bundle": "sample@1.0.0", "group": "lab"})
    assert r.status_code == 403
    assert "needs operator" in r.json()["detail"]
    assert rig.client.get("/api/v1/deployments", headers=rig.auth(caller)).json() == []
    assert rig.audit(action="deployment.create") == []
