"""The console: login sets an HttpOnly SameSite=Strict cookie; forms need the CSRF token."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def _login(api: TestClient) -> str:
    token = api.headers.pop("Authorization").split()[1]
    r = api.post("/console/login", data={"token": token}, follow_redirects=False)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    page = api.get("/console/admin")
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match
    return match.group(1)


def test_console_pages_redirect_to_login_without_session(api: TestClient) -> None:
    api.headers.pop("Authorization")
    r = api.get("/console/devices", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/console/login")
    assert api.post("/console/login", data={"token": "wrong"}).status_code == 401


def test_enrolment_token_form_needs_csrf_and_creates_token(api: TestClient) -> None:
    csrf = _login(api)
    refused = api.post("/console/enrolment-tokens", data={"csrf_token": "bad", "group": "lab"})
    assert refused.status_code == 403
    r = api.post("/console/enrolment-tokens", data={"csrf_token": csrf, "group": "lab"})
    token = re.search(r'id="new-token">([^<]+)<', r.text)
    assert token
    enrol = api.post("/api/v1/enrol", json={
        "token": token.group(1), "device_id": "dev-1",
        "public_key": "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEATNlciZoake/5wrfKRMea6SL/"
                      "Poq7WEDQcdw+G5fey4Q=\n-----END PUBLIC KEY-----\n"})
    assert enrol.status_code == 201
    devices = api.get("/console/devices")
    assert 'data-device-id="dev-1"' in devices.text and 'data-online="false"' in devices.text


def test_session_cookie_authorises_the_api_until_logout(api: TestClient) -> None:
    csrf = _login(api)
    assert api.get("/api/v1/devices").status_code == 200
    api.post("/console/logout", data={"csrf_token": csrf})
    assert api.get("/api/v1/devices").status_code == 401
