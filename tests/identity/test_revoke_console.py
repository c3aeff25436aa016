"""Revoking from the console: operators see the button and must type the device id to
confirm; a viewer sees no button and the server refuses the form; the API answers the same."""

from __future__ import annotations

from fastapi.testclient import TestClient

from .conftest import PASSWORD, Rig
from .helpers import add_user, console_login, csrf_of, enrol_device


def _session(rig: Rig, role: str) -> tuple[TestClient, str]:
    add_user(rig, f"{role}-1", role, PASSWORD)
    client = TestClient(rig.app, base_url=str(rig.client.base_url))
    return client, console_login(client, f"{role}-1", PASSWORD)


def test_operator_revokes_from_the_device_page_only_after_typing_its_id(rig: Rig) -> None:
    enrol_device(rig, "dev-1")
    client, _ = _session(rig, "operator")
    page = client.get("/console/devices/dev-1").text
    assert 'id="revoke-button"' in page
    csrf = csrf_of(page)
    r = client.post("/console/devices/dev-1/revoke",
                    data={"csrf_token": csrf, "confirm": "dev-2"}, follow_redirects=False)
    assert r.status_code == 303 and "nothing+was+revoked" in r.headers["location"]
    assert rig.app.state.services.revocations.get("dev-1") is None
    assert rig.audit(action="device.revoke") == []
    r = client.post("/console/devices/dev-1/revoke",
                    data={"csrf_token": csrf, "confirm": "dev-1"}, follow_redirects=False)
    assert r.status_code == 303 and "dev-1+is+revoked" in r.headers["location"]
    entry = rig.app.state.services.revocations.get("dev-1")
    assert entry is not None and entry.revoked_by == "operator-1"
    assert [a["subject"] for a in rig.audit(action="device.revoke")] == ["dev-1"]
    page = client.get("/console/devices/dev-1").text
    assert 'id="device-revoked"' in page and 'id="revoke-button"' not in page


def test_viewer_sees_no_revoke_button_and_the_server_refuses_the_form(rig: Rig) -> None:
    enrol_device(rig, "dev-1")
    client, _ = _session(rig, "viewer")
    page = client.get("/console/devices/dev-1").text
    assert 'id="revoke-button"' not in page
    r = client.post("/console/devices/dev-1/revoke",
                    data={"csrf_token": csrf_of(page), "confirm": "dev-1"},
                    follow_redirects=False)
    assert r.status_code == 403
    r = rig.client.post("/api/v1/devices/dev-1/revoke", headers=rig.auth("viewer"))
    assert r.status_code == 403 and "needs operator" in r.json()["detail"]
    assert rig.app.state.services.revocations.get("dev-1") is None
    assert rig.audit(action="device.revoke") == []
