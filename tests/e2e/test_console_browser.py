"""The web console in a real headless browser against real server and agent processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .browser import chromium_page
from .harness import Fleet, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def test_operator_logs_in_deploys_from_the_console_and_sees_the_device_serving(
    tmp_path: Path, sample_onnx: Path
) -> None:
    fleet = Fleet(tmp_path)
    try:
        bundle, pub = fleet.build_bundle(sample_onnx, "sample", "1.0.0")
        fleet.cli("fleet-server", "publishers", "add", str(pub), "--name", "ml-team")
        fleet.cli("model-bundle", "publish", str(bundle))
        fleet.start_agent("browser-dev-1")
        wait_for(lambda: (d := fleet.device("browser-dev-1")) and d["online"], 60,
                 "device online", fleet.procs())

        with chromium_page() as page:
            # Nothing is open without the token: the console sends us to its login page.
            page.goto(f"{fleet.url}/console/devices")
            assert page.url.endswith("/console/login")
            page.fill("#token", "not-the-token")
            page.click("#login-submit")
            assert "Wrong admin token" in page.content()

            page.fill("#token", fleet.token)
            page.click("#login-submit")
            page.wait_for_url("**/console/")  # the fleet overview is the landing page
            page.goto(f"{fleet.url}/console/devices")
            row = page.locator('tr[data-device-id="browser-dev-1"]')
            assert row.get_attribute("data-online") == "true"
            assert row.locator(".active-bundle").inner_text() == "-"

            # Deploy from the console form.
            page.goto(f"{fleet.url}/console/deployments")
            page.select_option("#deploy-bundle", "sample@1.0.0")
            page.select_option("#deploy-target-kind", "device")
            page.fill("#deploy-target", "browser-dev-1")
            page.click("#deploy-submit")
            page.wait_for_url("**/console/deployments/*")

            # The device picks it up; the devices page shows the active bundle and delegate.
            def active_in_console() -> bool:
                page.goto(f"{fleet.url}/console/devices")
                return page.locator('tr[data-device-id="browser-dev-1"] .active-bundle').inner_text() == "sample@1.0.0"

            wait_for(active_in_console, 90, "console shows sample@1.0.0 active", fleet.procs(),
                     interval=0.5)
            row = page.locator('tr[data-device-id="browser-dev-1"]')
            assert "CPUExecutionProvider" in row.locator(".delegate").inner_text()
            page.screenshot(path=str(tmp_path / "devices.png"), full_page=True)
            if (shots := os.environ.get("EDGEFLEET_SCREENSHOTS")):
                page.screenshot(path=f"{shots}/console-devices.png", full_page=True)

            # The deployment page shows the device's state; the bundle page its signer.
            page.goto(f"{fleet.url}/console/deployments")
            state = page.locator('.deployment-row span[data-device-id="browser-dev-1"]')
            assert state.get_attribute("data-state") == "committed"
            page.goto(f"{fleet.url}/console/bundles/sample@1.0.0")
            content = page.content()
            assert "ml-team" in content and "features" in content
    finally:
        fleet.stop()
