"""The console in headless Chromium on the 10,000-device fleet: filters and pages, live
updates without a reload, uPlot charts with axes and points, and axe-core on every page."""

from __future__ import annotations

import os
import time

import pytest

from ota.messages import ActiveModel, DeviceState, InstallStatus
from ota.signed_report import ReportSigner
from ota.topics import DeviceTopics
from tests.e2e.browser import chromium_page, drawn_chart, serious_axe_violations
from tests.fleet_server.mqtt_helpers import DeviceClient

from .conftest import SeededFleet, login
from .fleet_seed import DEVICE_KEY, FLEET, SHA

pytestmark = [pytest.mark.browser]

SHOTS = os.environ.get("EDGEFLEET_SCREENSHOTS")


def _shot(page, name: str, *, full_page: bool = False) -> None:  # noqa: ANN001
    """docs/operations.md's screenshots: EDGEFLEET_SCREENSHOTS=docs/img pytest tests/console"""
    if SHOTS:
        page.screenshot(path=f"{SHOTS}/{name}.png", full_page=full_page)


def _publish_state(fleet: SeededFleet, device_id: str, *, status: str, install: str,
                   progress: float) -> None:
    """What a real agent sends: a DeviceState on its state topic, over MQTT, with its secret."""
    seed = next(d for d in FLEET if d.id == device_id)
    client = DeviceClient(fleet.server.mqtt_url, device_id, seed.secret)
    try:
        client.wait_connack()
        name, _, version = (seed.bundle or "x@0").partition("@")
        state = DeviceState(device_id, status, time.time(), "0.1.0", 1,
                            ActiveModel(name, version, SHA, "a", seed.delegate or "cpu"),
                            InstallStatus(2, SHA, install, None, progress),
                            seq=time.monotonic_ns())  # signed, newer than the last state
        client.publish(DeviceTopics(device_id).state,
                       ReportSigner(DEVICE_KEY).sign(state.to_bytes()), retain=True)
    finally:
        client.client.loop_stop()
        client.client.disconnect()


def test_filters_search_and_pages_in_the_browser(fleet: SeededFleet) -> None:
    with chromium_page() as page:
        page.set_viewport_size({"width": 1280, "height": 900})
        login(page, fleet)
        online = int(page.get_attribute("#count-online", "data-count") or -1)
        page.click("#count-online")
        page.wait_for_url("**/console/devices?status=online")
        assert int(page.get_attribute("#pager", "data-total") or -2) == online
        assert page.locator("tr.device-row").count() == 50
        assert page.locator('tr.device-row[data-online="false"]').count() == 0
        page.click("#page-next")
        page.wait_for_url("**page=2**")
        first = page.locator("tr.device-row").first.get_attribute("data-device-id")
        expected = sorted(d.id for d in FLEET if d.status == "online")
        assert first == expected[50]
        # keyboard only: type a search, pick a group, submit with Enter
        page.goto(f"{fleet.url}/console/devices")
        page.focus("#f-q")
        page.keyboard.type("dev-0012")
        page.select_option("#f-group", "lab")
        page.focus("#f-q")
        page.keyboard.press("Enter")
        page.wait_for_url("**q=dev-0012**")
        rows = page.locator("tr.device-row")
        assert [rows.nth(i).get_attribute("data-device-id") for i in range(rows.count())] == \
            sorted(d.id for d in FLEET if "dev-0012" in d.id and d.group == "lab")
        page.set_viewport_size({"width": 768, "height": 1000})  # a tablet: no sideways page
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 768, f"the page scrolls sideways at 768 px ({width} px wide)"


def test_devices_list_and_device_page_update_live_without_a_reload(fleet: SeededFleet) -> None:
    target = next(d for d in FLEET if d.status == "offline" and d.bundle and d.id > "dev-05")
    before = fleet.registry.get_device(device_id=target.id)
    try:
        _watch_live_updates(fleet, target.id)
    finally:  # the other tests of the package read the seeded fleet as it was
        fleet.registry.update_device_state(
            device_id=target.id, online=False, ts=before["last_seen"], state=before["state"],
            active_bundle=before["active_bundle"], delegate=before["delegate"])


def _watch_live_updates(fleet: SeededFleet, device_id: str) -> None:
    target = next(d for d in FLEET if d.id == device_id)
    with chromium_page() as page:
        login(page, fleet)
        page.goto(f"{fleet.url}/console/devices?q={target.id}")
        row = page.locator(f'tr[data-device-id="{target.id}"]')
        assert row.get_attribute("data-online") == "false"
        page.evaluate("window.__marker = 'same page'")  # lost if the page reloads
        _publish_state(fleet, target.id, status="online", install="downloading", progress=0.25)
        page.wait_for_selector(f'tr[data-device-id="{target.id}"][data-online="true"]',
                               timeout=20_000)
        assert row.get_attribute("data-install") == "downloading"
        assert page.evaluate("window.__marker") == "same page"

        page.goto(f"{fleet.url}/console/devices/{target.id}")
        assert page.get_attribute("#install-progress", "value") == "0.25"
        page.evaluate("window.__marker = 'same page'")
        _publish_state(fleet, target.id, status="online", install="downloading", progress=0.75)
        page.wait_for_selector('#install-progress[value="0.75"]', timeout=20_000)
        assert page.evaluate("window.__marker") == "same page"
        _shot(page, "console-device")


def test_device_chart_renders_axes_legend_and_one_point_per_window(fleet: SeededFleet) -> None:
    device = FLEET[42]
    with chromium_page() as page:
        login(page, fleet)
        page.goto(f"{fleet.url}/console/devices/{device.id}/telemetry")
        chart = page.locator("#chart-device-latency")
        drawn = drawn_chart(page, "chart-device-latency")
        assert drawn["points"] == len(device.windows)
        assert drawn["axes"] == 2  # time axis and the ms axis
        assert all(k in str(drawn["legend"]) for k in ("p50", "p95", "p99"))
        assert drawn["canvases"] == 1
        assert drawn_chart(page, "chart-device-drift")["points"] == (1 if device.drift else 0)
        # hovering a point shows a tooltip with the time and the values
        box = chart.locator(".u-over").bounding_box()
        assert box
        page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2)
        tip = chart.locator(".chart-tooltip")
        tip.wait_for(state="visible")
        assert "p95" in tip.inner_text()
        _shot(page, "console-telemetry")
    drifted = next(d for d in FLEET if d.drift)
    with chromium_page() as page:
        login(page, fleet)
        page.goto(f"{fleet.url}/console/devices/{drifted.id}/telemetry")
        drift = drawn_chart(page, "chart-device-drift")
        assert (drift["points"], drift["series"]) == (1, 2)  # one report, two inputs


def test_a_device_with_one_telemetry_window_still_shows_its_point(fleet: SeededFleet) -> None:
    device = FLEET[-1]
    assert len(device.windows) == 1
    with chromium_page() as page:
        login(page, fleet)
        page.goto(f"{fleet.url}/console/devices/{device.id}/telemetry")
        assert drawn_chart(page, "chart-device-latency")["points"] == 1
        # the p95 point is painted on the canvas where uPlot places it (not a blank chart)
        painted = """() => {
          const u = document.querySelector('#chart-device-latency')._plot;
          const x = Math.round(u.valToPos(u.data[0][0], 'x', true));
          const y = Math.round(u.valToPos(u.data[2][0], 'y', true));
          const px = u.ctx.getImageData(x, y, 1, 1).data;
          return px[3] > 0 && !(px[0] > 240 && px[1] > 240 && px[2] > 240);
        }"""
        page.wait_for_function(painted)
        assert page.evaluate(painted)


def test_the_reusable_chart_draws_an_inline_spec_over_samples(fleet: SeededFleet) -> None:
    """What another page (e.g. a rollout's gate interval) gets from templates/_chart.html:
    an inline JSON spec, x as a sample count rather than a time."""
    from fleet_server.console.routes import TEMPLATES

    spec = {"title": "agreement", "unit": "rate", "xtime": False, "xlabel": "samples",
            "x": [100, 200, 400], "threshold": 0.95, "bands": [[1, 0]],
            "markers": [{"x": 400, "label": "decided pass"}],
            "series": [{"label": "lower", "values": [0.90, 0.93, 0.96]},
                       {"label": "upper", "values": [0.99, 0.985, 0.98]}]}
    markup = TEMPLATES.env.from_string(
        '{% from "_chart.html" import chart %}{{ chart("chart-x", "Gate", spec=spec) }}'
    ).render(spec=spec)
    with chromium_page() as page:
        login(page, fleet)
        page.goto(f"{fleet.url}/console/devices/{FLEET[0].id}/telemetry")  # loads uPlot
        page.wait_for_selector("#chart-device-latency[data-rendered=true]")
        page.evaluate("""html => {
            document.querySelector('main').insertAdjacentHTML('beforeend', html);
            EdgefleetCharts.mountAll();
        }""", markup)
        drawn = drawn_chart(page, "chart-x")
        assert (drawn["points"], drawn["series"], drawn["markers"], drawn["axes"]) == (3, 2, 1, 2)
        assert "samples" in str(drawn["legend"]) and "threshold" in str(drawn["legend"])


def _pages(fleet: SeededFleet) -> list[str]:
    device = FLEET[42].id
    bundle = fleet.api.get("/api/v1/bundles").json()[0]["id"]
    return ["/console/", "/console/devices", "/console/devices?trouble=any&sort=latency",
            f"/console/devices/{device}", f"/console/devices/{device}/telemetry",
            "/console/bundles", f"/console/bundles/{bundle}", "/console/deployments",
            "/console/rollouts", f"/console/rollouts/{fleet.rollouts[0]}",
            f"/console/rollouts/{fleet.rollouts[0]}/compare", "/console/audit",
            "/console/admin"]


def test_every_console_page_has_no_serious_or_critical_axe_violation(
        fleet: SeededFleet) -> None:
    failures: dict[str, list[str]] = {}
    with chromium_page() as page:
        page.goto(f"{fleet.url}/console/login")
        _axe(page, "/console/login", failures)
        login(page, fleet)
        for path in _pages(fleet):
            page.goto(fleet.url + path)
            page.wait_for_function(  # charts drawn (live pages keep an SSE stream open)
                "[...document.querySelectorAll('.ef-chart')].every(e => e.hasAttribute('data-points'))")
            _axe(page, path, failures)
            if path.startswith("/console/devices?"):
                _shot(page, "console-devices")
        if SHOTS:
            page.goto(f"{fleet.url}/console/")
            _shot(page, "console-overview", full_page=True)
        page.set_viewport_size({"width": 768, "height": 1024})  # a tablet, upright
        for path in _pages(fleet)[:7]:  # overview, devices, device, telemetry, bundles
            page.goto(fleet.url + path)
            width = page.evaluate("document.documentElement.scrollWidth")
            if width > 768:
                failures.setdefault(path, []).append(f"scrolls sideways at 768 px: {width}")
    assert failures == {}, failures


def _axe(page, path: str, failures: dict[str, list[str]]) -> None:  # noqa: ANN001
    bad = serious_axe_violations(page)
    if bad:
        failures[path] = bad


def test_bulk_deploy_to_ticked_devices_and_refusal_with_none_ticked(fleet: SeededFleet) -> None:
    before = {d["id"] for d in fleet.api.get("/api/v1/deployments").json()}
    with chromium_page() as page:
        login(page, fleet)
        page.goto(f"{fleet.url}/console/devices?group=lab&status=online&per_page=25")
        page.select_option("#bulk-bundle", "vision@2.0.0")
        page.click("#bulk-deploy")  # nothing ticked: refused, nothing deployed
        page.wait_for_url("**/console/devices?message=*")
        assert "select at least one device first" in page.inner_text("#flash")
        assert {d["id"] for d in fleet.api.get("/api/v1/deployments").json()} == before

        page.goto(f"{fleet.url}/console/devices?group=lab&status=online&per_page=25")
        rows = page.locator("tr.device-row")
        chosen = [rows.nth(i).get_attribute("data-device-id") for i in (0, 1)]
        for device_id in chosen:
            page.check(f'input.select-device[value="{device_id}"]')
        assert page.inner_text("#bulk-count") == "2"
        page.select_option("#bulk-bundle", "vision@2.0.0")
        page.click("#bulk-deploy")
        page.wait_for_url("**/console/deployments?message=*")
        assert "deployed to 2 devices" in page.inner_text("#flash")
    made = [d for d in fleet.api.get("/api/v1/deployments").json() if d["id"] not in before]
    assert sorted(t["device_id"] for d in made for t in d["targets"]) == sorted(chosen)
    assert {d["bundle"] for d in made} == {"vision@2.0.0"}


def test_bulk_rollout_on_ticked_devices_starts_a_rollout_on_exactly_those(
        fleet: SeededFleet) -> None:
    with chromium_page() as page:
        login(page, fleet)
        page.goto(f"{fleet.url}/console/devices?bundle=audio&status=online&per_page=25")
        rows = page.locator("tr.device-row")
        chosen = sorted(rows.nth(i).get_attribute("data-device-id") or "" for i in (2, 3, 4))
        for device_id in chosen:
            page.focus(f'input.select-device[value="{device_id}"]')
            page.keyboard.press("Space")  # keyboard only
        assert page.inner_text("#bulk-count") == "3"
        page.select_option("#bulk-bundle", "audio@2.1.0")
        page.click("#bulk-rollout")
        page.wait_for_url("**/console/rollouts/ro-*")
        rollout_id = page.get_attribute("#rollout-id", "data-rollout-id")
    r = fleet.api.get(f"/api/v1/rollouts/{rollout_id}").json()
    assert r["bundle"] == "audio@2.1.0" and r["target"]["kind"] == "devices"
    assert sorted(r["target"]["value"].split(",")) == chosen
