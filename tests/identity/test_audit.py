"""Every mutating action lands in the one audit log with who did it, from where, what and a
small detail; the log pages by id and is readable by operators and admins only."""

from __future__ import annotations

from pathlib import Path

from .conftest import PASSWORD, Rig
from .helpers import console_login, enrol_device, signed_bundle


def test_each_mutating_action_is_recorded_with_its_actor(rig: Rig, tmp_path: Path,
                                                         sample_onnx: Path) -> None:
    c = rig.client
    bundle, pem = signed_bundle(tmp_path, sample_onnx)
    assert c.post("/api/v1/publishers", headers=rig.auth("publisher"),
                  json={"public_key": pem, "name": "ml"}).status_code == 201
    up = c.post("/api/v1/bundles", headers={**rig.auth("publisher"),
                                            "content-type": "application/octet-stream"},
                content=bundle.read_bytes())
    assert up.status_code == 201, up.text
    assert c.post("/api/v1/enrolment-tokens", headers=rig.auth("operator"),
                  json={"group": "lab"}).status_code == 201
    enrol_device(rig, "dev-1")
    enrol_device(rig, "dev-2")
    dep = c.post("/api/v1/deployments", headers=rig.auth("operator"),
                 json={"bundle": "sample@1.0.0", "device_id": "dev-1"}).json()
    assert c.post(f"/api/v1/deployments/{dep['id']}/cancel",
                  headers=rig.auth("operator")).status_code == 200
    ro = c.post("/api/v1/rollouts", headers=rig.auth("operator"),
                json={"bundle": "sample@1.0.0", "devices": ["dev-2"]}).json()
    for action in ("pause", "resume", "promote", "abort"):
        r = c.post(f"/api/v1/rollouts/{ro['id']}/{action}", headers=rig.auth("operator"))
        assert r.status_code == 200, (action, r.text)
    assert c.post("/api/v1/users", headers=rig.auth("admin"), json={
        "username": "alice", "password": PASSWORD, "role": "viewer"}).status_code == 201
    assert c.patch("/api/v1/users/alice", headers=rig.auth("admin"),
                   json={"role": "operator", "password": PASSWORD + "!"}).status_code == 200
    tok = c.post("/api/v1/tokens", headers=rig.auth("admin"),
                 json={"name": "ci", "role": "viewer"}).json()
    assert c.delete(f"/api/v1/tokens/{tok['id']}", headers=rig.auth("admin")).status_code == 200

    rows = {(a["action"], a["subject"]): a for a in rig.audit(limit=500)}
    expected = {
        ("publisher.add", up.json()["publisher_key_id"]): "token:publisher-token",
        ("bundle.upload", "sample@1.0.0"): "token:publisher-token",
        ("enrolment_token.create", "lab"): "token:operator-token",
        ("deployment.create", dep["id"]): "token:operator-token",
        ("deployment.cancel", dep["id"]): "token:operator-token",
        ("rollout.created", ro["id"]): "token:operator-token",
        ("rollout.pause", ro["id"]): "token:operator-token",
        ("rollout.resume", ro["id"]): "token:operator-token",
        ("rollout.promote", ro["id"]): "token:operator-token",
        ("rollout.abort", ro["id"]): "token:operator-token",
        ("user.add", "alice"): "token:admin-token",
        ("user.update", "alice"): "token:admin-token",
        ("token.create", tok["id"]): "token:admin-token",
        ("token.revoke", tok["id"]): "token:admin-token",
    }
    missing = [k for k in expected if k not in rows]
    assert missing == []
    assert {k: rows[k]["actor"] for k in expected} == expected
    assert {rows[k]["client"] for k in expected} == {"testclient"}
    assert rows[("user.update", "alice")]["detail"] == {"role": "operator",
                                                        "password": "changed"}
    assert PASSWORD not in str(rig.audit(limit=500))
    assert rows[("bundle.upload", "sample@1.0.0")]["detail"]["created"] is True
    # the bootstrap token acts as bootstrap-admin
    c.post("/api/v1/enrolment-tokens", headers=rig.auth("bootstrap"), json={"group": "b"})
    assert rig.audit(action="enrolment_token.create", subject="b")[0]["actor"] == \
        "bootstrap-admin"


def test_console_actions_are_recorded_with_the_user(rig: Rig) -> None:
    rig.client.post("/api/v1/users", headers=rig.auth("bootstrap"), json={
        "username": "olga", "password": PASSWORD, "role": "operator"})
    csrf = console_login(rig.client, "olga", PASSWORD)
    r = rig.client.post("/console/enrolment-tokens", data={"csrf_token": csrf, "group": "lab"})
    assert r.status_code == 200
    rows = rig.audit(action="enrolment_token.create")
    assert [(a["actor"], a["subject"], a["client"]) for a in rows] == [
        ("olga", "lab", "testclient")]
    assert [a["actor"] for a in rig.audit(action="login")] == ["olga"]


def test_audit_pages_by_id_and_is_for_operators_and_admins(rig: Rig) -> None:
    for i in range(5):
        rig.client.post("/api/v1/enrolment-tokens", headers=rig.auth("admin"),
                        json={"group": f"g{i}"})
    first = rig.audit(limit=3, action="enrolment_token.create")
    rest = rig.audit(limit=3, action="enrolment_token.create", before=first[-1]["id"])
    assert [a["subject"] for a in first + rest] == ["g4", "g3", "g2", "g1", "g0"]
    for role, status in (("viewer", 403), ("publisher", 403), ("operator", 200),
                         ("admin", 200)):
        assert rig.client.get("/api/v1/audit", headers=rig.auth(role)).status_code == status
    assert rig.client.get("/api/v1/audit").status_code == 401


def test_offline_trust_changes_are_in_the_servers_audit_log(tmp_path: Path) -> None:
    import getpass

    from fastapi.testclient import TestClient

    from fleet_server.app import create_app
    from fleet_server.cli import main
    from fleet_server.config import ServerSettings

    data, offline = tmp_path / "data", tmp_path / "usb"
    assert main(["trust", "init", "--data", str(data), "--root-keys", str(offline)]) == 0
    assert main(["trust", "rotate-root", "--data", str(data), "--root-keys", str(offline),
                 "--new-root-keys", str(tmp_path / "new")]) == 0
    assert main(["trust", "init", "--data", str(data), "--root-keys", str(offline)]) == 1
    app = create_app(ServerSettings(data_dir=data, port=0, mqtt_port=0))
    with TestClient(app) as client:
        rows = client.get("/api/v1/audit", headers={
            "Authorization": f"Bearer {app.state.services.data_dir.admin_token}"}).json()
    assert [(r["action"], r["actor"], r["client"]) for r in rows] == [
        ("trust.rotate_root", f"local:{getpass.getuser()}", "local"),
        ("trust.init", f"local:{getpass.getuser()}", "local")]
    assert rows[0]["detail"]["version"] == 2


def test_console_audit_page_shows_who_and_from_where_and_pages(rig: Rig) -> None:
    from fleet_server.console import rollouts as console_rollouts

    for i in range(console_rollouts.AUDIT_PAGE + 1):
        rig.app.state.services.audit.record(actor="bulk", action="test.row", subject=f"s{i}",
                                            client="10.0.0.9")
    rig.client.post("/api/v1/users", headers=rig.auth("bootstrap"), json={
        "username": "olga", "password": PASSWORD, "role": "operator"})
    console_login(rig.client, "olga", PASSWORD)
    page = rig.client.get("/console/audit")
    assert page.status_code == 200
    assert page.text.count('class="audit-row"') == console_rollouts.AUDIT_PAGE
    assert 'data-actor="olga"' in page.text and "testclient" in page.text  # olga's login
    older = page.text.split('href="/console/audit?before=')[1].split('"')[0]
    rest = rig.client.get(f"/console/audit?before={older}")
    total = len(rig.audit(limit=5000))
    assert rest.text.count('class="audit-row"') == total - console_rollouts.AUDIT_PAGE
    assert "audit-older" not in rest.text
    rig.client.patch("/api/v1/users/olga", headers=rig.auth("admin"), json={"role": "viewer"})
    assert rig.client.get("/console/audit").status_code == 403
