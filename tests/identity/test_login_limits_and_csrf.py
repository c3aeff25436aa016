"""Console login is rate-limited per client address and per user name (429 with
Retry-After); every console form needs the session's CSRF token (403 when missing or wrong,
and nothing changes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_server.config import ServerSettings

from .conftest import PASSWORD, Rig, make_rig
from .helpers import add_user, console_login


@pytest.fixture()
def limited(tmp_path: Path) -> Iterator[Rig]:
    yield from make_rig(ServerSettings(data_dir=tmp_path / "fleet", port=0, mqtt_port=0,
                                       login_max_per_user=3, login_max_per_address=6,
                                       login_window_s=600))


def test_password_guessing_on_one_user_gets_429_with_retry_after(limited: Rig) -> None:
    add_user(limited, "alice", "admin", PASSWORD)
    for guess in ("password1234", "letmein12345", "qwertyuiop12"):
        r = limited.client.post("/console/login", data={"username": "alice", "password": guess})
        assert r.status_code == 401
    r = limited.client.post("/console/login", data={"username": "alice", "password": "x" * 12})
    assert r.status_code == 429
    assert 0 < int(r.headers["retry-after"]) <= 600
    assert "Too many login attempts" in r.text
    # even the right password is refused while the limit holds: no session is made
    r = limited.client.post("/console/login", data={"username": "alice", "password": PASSWORD},
                            follow_redirects=False)
    assert r.status_code == 429 and "edgefleet_session" not in r.cookies
    failed = limited.audit(action="login.failed")
    assert [a["subject"] for a in failed] == ["alice"] * 3


def test_one_address_spraying_many_users_gets_429(limited: Rig) -> None:
    statuses = [limited.client.post("/console/login", data={
        "username": f"user{i}", "password": "x" * 12}).status_code for i in range(8)]
    assert statuses == [401] * 6 + [429] * 2
    r = limited.client.post("/console/login", data={"token": limited.bootstrap})
    assert r.status_code == 429 and "retry-after" in r.headers


def test_console_form_without_or_with_wrong_csrf_is_403_and_changes_nothing(rig: Rig) -> None:
    add_user(rig, "alice", "admin", PASSWORD)
    csrf = console_login(rig.client, "alice", PASSWORD)
    body = {"username": "bob", "password": PASSWORD, "role": "viewer"}
    for bad in ({}, {"csrf_token": "wrong"}, {"csrf_token": ""}):
        r = rig.client.post("/console/users", data={**body, **bad})
        assert r.status_code == 403, r.text
        assert "CSRF" in r.json()["detail"]
    r = rig.client.post("/console/enrolment-tokens", data={"group": "lab"})
    assert r.status_code == 403
    users = [u["username"] for u in rig.client.get("/api/v1/users",
                                                   headers=rig.auth("admin")).json()]
    assert users == ["alice"]
    assert rig.audit(action="user.add", subject="bob") == []
    assert rig.audit(action="enrolment_token.create") == []
    ok = rig.client.post("/console/users", data={**body, "csrf_token": csrf},
                         follow_redirects=False)
    assert ok.status_code == 303
    assert [a["actor"] for a in rig.audit(action="user.add", subject="bob")] == ["alice"]


def test_console_post_from_another_origin_is_refused_even_with_csrf(rig: Rig) -> None:
    add_user(rig, "alice", "admin", PASSWORD)
    csrf = console_login(rig.client, "alice", PASSWORD)
    r = rig.client.post("/console/users", headers={"Origin": "https://evil.example"},
                        data={"csrf_token": csrf, "username": "bob", "password": PASSWORD,
                              "role": "admin"})
    assert r.status_code == 403
    assert [u["username"] for u in rig.client.get(
        "/api/v1/users", headers=rig.auth("admin")).json()] == ["alice"]


def test_console_tokens_page_creates_shows_once_and_revokes(rig: Rig) -> None:
    add_user(rig, "alice", "admin", PASSWORD)
    csrf = console_login(rig.client, "alice", PASSWORD)
    page = rig.client.post("/console/tokens", data={"csrf_token": csrf, "name": "ci-bot",
                                                    "role": "publisher", "expires_in_days": "7"})
    assert page.status_code == 200
    secret = page.text.split('id="new-api-token">')[1].split("<")[0]
    auth = {"Authorization": f"Bearer {secret}"}
    assert rig.client.get("/api/v1/me", headers=auth).json() == {
        "name": "token:ci-bot", "role": "publisher", "kind": "token"}
    assert secret not in rig.client.get("/console/users").text
    token_id = next(t["id"] for t in rig.client.get("/api/v1/tokens", headers=auth | rig.auth(
        "admin")).json() if t["name"] == "ci-bot")
    r = rig.client.post(f"/console/tokens/{token_id}/revoke", data={"csrf_token": csrf},
                        follow_redirects=False)
    assert r.status_code == 303
    assert rig.client.get("/api/v1/me", headers=auth).status_code == 401


def test_login_limit_lifts_once_the_window_has_passed(limited: Rig) -> None:
    import time

    add_user(limited, "alice", "admin", PASSWORD)
    limiter = limited.app.state.services.login_limiter
    now = [time.time()]
    limiter.clock = lambda: now[0]
    for _ in range(3):
        limited.client.post("/console/login", data={"username": "alice", "password": "x" * 12})
    now[0] += 100
    r = limited.client.post("/console/login", data={"username": "alice", "password": PASSWORD})
    assert (r.status_code, r.headers["retry-after"]) == (429, "500")
    now[0] += 500  # the first failure leaves the 600 s window
    r = limited.client.post("/console/login", data={"username": "alice", "password": PASSWORD},
                            follow_redirects=False)
    assert r.status_code == 303 and "edgefleet_session" in r.cookies
