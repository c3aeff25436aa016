"""The console in a real browser (Debian chromium) against a real ``fleet-server serve``:
a viewer sees no deploy control and the server refuses the deploy itself; an operator
deploys; logging out deletes the session, so the old cookie no longer opens anything."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.e2e.browser import chromium_page
from tests.e2e.harness import Fleet, script

from .conftest import PASSWORD
from .helpers import pem_of

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def _add_user(fleet: Fleet, name: str, role: str) -> None:
    proc = subprocess.run([script("fleet-server"), "users", "add", name, "--role", role],
                          input=PASSWORD + "\n", capture_output=True, text=True, timeout=60,
                          env={**__import__("os").environ, **fleet.env})
    assert proc.returncode == 0, proc.stderr
    assert f"{name}  {role}  enabled" in proc.stdout


def _login(page: object, fleet: Fleet, name: str) -> None:
    page.goto(f"{fleet.url}/console/login")
    page.fill("#username", name)
    page.fill("#password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_url("**/console/")
    assert page.inner_text("#whoami").startswith(name)


def test_viewer_cannot_deploy_operator_can_and_logout_kills_the_session(
        tmp_path: Path, sample_onnx: Path) -> None:
    fleet = Fleet(tmp_path)
    try:
        bundle, pub = fleet.build_bundle(sample_onnx, "sample", "1.0.0")
        fleet.cli("fleet-server", "publishers", "add", str(pub), "--name", "ml-team")
        fleet.cli("model-bundle", "publish", str(bundle))
        enrol = json.loads(fleet.cli("fleet-server", "enrol-token", "--json").stdout)["token"]
        r = httpx.post(f"{fleet.url}/api/v1/enrol", json={
            "token": enrol, "device_id": "dev-1",
            "public_key": pem_of(Ed25519PrivateKey.generate())})
        assert r.status_code == 201, r.text
        _add_user(fleet, "vera", "viewer")
        _add_user(fleet, "olga", "operator")
        admin = httpx.Client(base_url=f"{fleet.url}/api/v1",
                             headers={"Authorization": f"Bearer {fleet.token}"})

        with chromium_page() as page:
            _login(page, fleet, "vera")
            page.goto(f"{fleet.url}/console/deployments")
            assert page.locator("#deploy-form").count() == 0
            assert page.locator("#deploy-submit").count() == 0
            page.goto(f"{fleet.url}/console/bundles/sample@1.0.0")
            assert page.locator("#deploy-submit").count() == 0
            assert page.locator("#nav-audit").count() == 0
            # The hidden control is not the defence: the server refuses the deploy itself,
            # even with the viewer's live session and its valid CSRF token.
            csrf = page.locator("input[name=csrf_token]").first.get_attribute("value")
            refused = page.request.post(f"{fleet.url}/console/deployments", form={
                "csrf_token": csrf, "bundle": "sample@1.0.0", "target_kind": "device",
                "target": "dev-1"}, max_redirects=0)
            assert refused.status == 403
            assert "needs operator" in refused.text()
            assert admin.get("/deployments").json() == []

            cookie = next(c for c in page.context.cookies() if c["name"] == "edgefleet_session")
            page.click("#logout")
            page.wait_for_url("**/console/login")
            # the old cookie, replayed, opens nothing: the session is gone on the server
            page.context.add_cookies([cookie])
            page.goto(f"{fleet.url}/console/deployments")
            assert page.url.endswith("/console/login")
            replay = httpx.get(f"{fleet.url}/api/v1/me",
                               cookies={"edgefleet_session": cookie["value"]})
            assert replay.status_code == 401

            _login(page, fleet, "olga")
            page.goto(f"{fleet.url}/console/deployments")
            page.select_option("#deploy-bundle", "sample@1.0.0")
            page.select_option("#deploy-target-kind", "device")
            page.fill("#deploy-target", "dev-1")
            page.click("#deploy-submit")
            page.wait_for_url("**/console/deployments/*")

        deployments = admin.get("/deployments").json()
        assert [(d["bundle"], d["created_by"]) for d in deployments] == [("sample@1.0.0", "olga")]
        audit = admin.get("/audit", params={"action": "deployment.create"}).json()
        assert [(a["actor"], a["subject"]) for a in audit] == [("olga", deployments[0]["id"])]
        assert audit[0]["client"] == "127.0.0.1"
    finally:
        fleet.stop()
