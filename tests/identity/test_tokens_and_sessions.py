"""API tokens expire and can be revoked; console sessions end at logout, when idle, at their
absolute lifetime and when their user is disabled; disabled users cannot log in."""

from __future__ import annotations

import sqlite3
import time

from .conftest import PASSWORD, Rig
from .helpers import add_user, console_login


def _token(rig: Rig, role: str = "operator", **extra: object) -> dict:
    r = rig.client.post("/api/v1/tokens", headers=rig.auth("bootstrap"),
                        json={"name": "ci", "role": role, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def test_token_is_shown_once_and_stored_only_as_its_hash(rig: Rig) -> None:
    new = _token(rig)
    assert new["token"].startswith("eft_") and len(new["token"]) > 40
    listed = rig.client.get("/api/v1/tokens", headers=rig.auth("admin")).json()
    row = next(t for t in listed if t["id"] == new["id"])
    assert "token" not in row and row["role"] == "operator" and row["revoked_at"] is None
    db = sqlite3.connect(rig.app.state.services.data_dir.registry_path)
    stored = db.execute("select * from api_tokens where id = ?", [new["id"]]).fetchone()
    assert new["token"] not in repr(stored)


def test_revoked_token_is_refused_from_the_next_request(rig: Rig) -> None:
    new = _token(rig)
    auth = {"Authorization": f"Bearer {new['token']}"}
    assert rig.client.get("/api/v1/devices", headers=auth).status_code == 200
    r = rig.client.delete(f"/api/v1/tokens/{new['id']}", headers=rig.auth("admin"))
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    refused = rig.client.get("/api/v1/devices", headers=auth)
    assert refused.status_code == 401
    assert refused.json()["detail"] == "API token is unknown, expired or revoked"
    assert rig.client.post("/api/v1/enrolment-tokens", headers=auth, json={}).status_code == 401


def test_expired_token_is_refused(rig: Rig) -> None:
    new = _token(rig, expires_in_s=60)
    auth = {"Authorization": f"Bearer {new['token']}"}
    assert rig.client.get("/api/v1/me", headers=auth).json()["name"] == "token:ci"
    # its expiry passes (set in the registry, as time would)
    with sqlite3.connect(rig.app.state.services.data_dir.registry_path) as db:
        db.execute("update api_tokens set expires_at = ? where id = ?",
                   [time.time() - 1, new["id"]])
    assert rig.client.get("/api/v1/me", headers=auth).status_code == 401


def test_token_lifetime_and_role_are_validated_and_nothing_is_minted(rig: Rig) -> None:
    before = len(rig.client.get("/api/v1/tokens", headers=rig.auth("admin")).json())
    for body in ({"name": "x", "role": "root"}, {"name": "x", "role": "viewer",
                 "expires_in_s": 10**9}, {"name": " ", "role": "viewer"}):
        assert rig.client.post("/api/v1/tokens", headers=rig.auth("admin"),
                               json=body).status_code == 422
    assert len(rig.client.get("/api/v1/tokens", headers=rig.auth("admin")).json()) == before


def test_bootstrap_token_creates_the_first_admin_who_then_manages_users(rig: Rig) -> None:
    add_user(rig, "alice", "admin", PASSWORD)
    console_login(rig.client, "alice", PASSWORD)
    rig.client.cookies.clear()
    assert rig.client.post("/api/v1/users", headers=rig.auth("bootstrap"), json={
        "username": "alice", "password": PASSWORD, "role": "viewer"}).status_code == 409
    r = rig.client.post("/api/v1/users", headers=rig.auth("operator"), json={
        "username": "mallory", "password": PASSWORD, "role": "admin"})
    assert r.status_code == 403
    names = [u["username"] for u in rig.client.get("/api/v1/users",
                                                   headers=rig.auth("admin")).json()]
    assert names == ["alice"]


def test_logout_deletes_the_session_and_the_old_cookie_is_refused(rig: Rig) -> None:
    add_user(rig, "vera", "viewer", PASSWORD)
    csrf = console_login(rig.client, "vera", PASSWORD)
    cookie = rig.client.cookies.get("edgefleet_session")
    assert rig.client.get("/api/v1/me").json()["name"] == "vera"
    r = rig.client.post("/console/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/console/login")
    rig.client.cookies.set("edgefleet_session", cookie)
    assert rig.client.get("/api/v1/me").status_code == 401
    again = rig.client.get("/console/bundles", follow_redirects=False)
    assert (again.status_code, again.headers["location"]) == (303, "/console/login")


def test_idle_and_absolute_session_expiry(rig: Rig) -> None:
    sessions = rig.app.state.services.sessions
    now = [time.time()]
    sessions.clock = lambda: now[0]
    add_user(rig, "vera", "viewer", PASSWORD)
    console_login(rig.client, "vera", PASSWORD)
    now[0] += sessions.idle_s - 5  # busy enough: each request restarts the idle clock
    assert rig.client.get("/api/v1/me").status_code == 200
    now[0] += sessions.idle_s - 5
    assert rig.client.get("/api/v1/me").status_code == 200
    now[0] += sessions.idle_s + 1  # idle too long
    assert rig.client.get("/api/v1/me").status_code == 401

    console_login(rig.client, "vera", PASSWORD)
    for _ in range(int(sessions.max_s // (sessions.idle_s - 5)) + 1):  # never idle...
        now[0] += sessions.idle_s - 5
        status = rig.client.get("/api/v1/me").status_code
    assert status == 401  # ...but past its absolute lifetime


def test_disabling_a_user_ends_their_session_and_their_logins(rig: Rig) -> None:
    add_user(rig, "olga", "operator", PASSWORD)
    console_login(rig.client, "olga", PASSWORD)
    assert rig.client.get("/api/v1/me").json()["role"] == "operator"
    r = rig.client.patch("/api/v1/users/olga", headers=rig.auth("admin"),
                         json={"disabled": True})
    assert r.status_code == 200 and r.json()["disabled"] is True
    assert rig.client.get("/api/v1/me").status_code == 401
    refused = rig.client.post("/console/login", data={"username": "olga",
                                                      "password": PASSWORD})
    assert refused.status_code == 401 and "edgefleet_session" not in refused.cookies


def test_role_change_applies_to_the_next_console_request(rig: Rig) -> None:
    add_user(rig, "olga", "operator", PASSWORD)
    console_login(rig.client, "olga", PASSWORD)
    assert rig.client.get("/console/audit").status_code == 200
    rig.client.patch("/api/v1/users/olga", headers=rig.auth("admin"), json={"role": "viewer"})
    assert rig.client.get("/console/audit").status_code == 403
    assert rig.client.get("/api/v1/me").json()["role"] == "viewer"
