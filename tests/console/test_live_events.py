"""The console's live-update stream and static files over real HTTP: a registry write
reaches an open /console/events stream; no session, no stream; only listed files served."""

from __future__ import annotations

import re
import sqlite3
import time

import httpx

from fleet_server.registry import Registry

from .conftest import SeededFleet
from .fleet_seed import FLEET


def _console(fleet: SeededFleet) -> httpx.Client:
    """A client logged in to the console (session cookie); the caller closes it."""
    web = httpx.Client(base_url=fleet.url, timeout=30)
    r = web.post("/console/login", data={"token": fleet.server.admin_token})
    assert r.status_code == 303 and "edgefleet_session" in web.cookies
    return web


def test_a_registry_write_reaches_an_open_event_stream_as_a_change(fleet: SeededFleet) -> None:
    device = next(d for d in FLEET if d.status == "online")
    before = fleet.registry.get_device(device_id=device.id)
    cursor = fleet.registry.change_cursor()
    web = _console(fleet)
    try:
        with web.stream("GET", "/console/events", params={"since": cursor}) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            fleet.registry.touch_device(device_id=device.id, ts=before["last_seen"] + 1)
            events = []
            deadline = time.monotonic() + 20
            for line in stream.iter_lines():
                events.append(line)
                if line == "event: change" or time.monotonic() > deadline:
                    break
    finally:
        web.close()
    assert "event: change" in events, events
    assert fleet.registry.change_cursor() != cursor
    fleet.registry.touch_device(device_id=device.id, ts=before["last_seen"])


def test_no_session_no_stream_and_no_console_data(fleet: SeededFleet) -> None:
    with httpx.Client(base_url=fleet.url, timeout=10) as web:
        for path in ("/console/events", "/console/", "/console/devices",
                     f"/console/devices/{FLEET[0].id}/series.json"):
            r = web.get(path)
            assert (r.status_code, r.headers.get("location")) == (303, "/console/login"), path


def test_static_route_serves_only_the_console_files(fleet: SeededFleet) -> None:
    with httpx.Client(base_url=fleet.url, timeout=10) as web:
        js = web.get("/console/static/vendor/uPlot.iife.min.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert "uPlot" in js.text
        for bad in ("/console/static/../routes.py", "/console/static/%2e%2e/routes.py",
                    "/console/static/nope.js", "/console/static/../../registry.py"):
            r = web.get(bad)
            assert r.status_code == 404 and "def " not in r.text, bad


def test_change_cursor_moves_on_a_write_by_this_or_another_connection_only(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "registry.db"
    registry = Registry(path)
    try:
        start = registry.change_cursor()
        registry.list_devices()
        assert registry.change_cursor() == start  # reading changes nothing
        registry.add_device(device_id="dev-1", group="lab", public_key="", mqtt_secret_hash="x")
        mine = registry.change_cursor()
        assert mine != start
        other = sqlite3.connect(path)
        with other:
            other.execute("UPDATE devices SET online = 1 WHERE id = 'dev-1'")
        other.close()
        assert registry.change_cursor() != mine  # e.g. the rollout store's connection
    finally:
        registry.close()


def test_device_pages_read_as_sections_for_every_kind_of_device(fleet: SeededFleet) -> None:
    never = next(d for d in FLEET if d.status == "never")
    fell = next(d for d in FLEET if d.fallback)
    failed = next(d for d in FLEET if d.install == "failed")
    web = _console(fleet)
    try:
        page = web.get(f"/console/devices/{never.id}").text
        assert 'id="device-status" class="offline">never seen<' in page
        assert "No install reported." in page and "No execution report yet." in page
        page = web.get(f"/console/devices/{fell.id}").text
        assert 'class="fallback-marker">FALLBACK</strong>' in page
        assert 'id="device-fallback-reason">CUDA: libcudart missing<' in page
        page = web.get(f"/console/devices/{failed.id}").text
        assert 'id="install-state" class="trouble">failed<' in page
        assert 'id="install-error">verify: bad chunk<' in page
        # the raw JSON is there, folded away
        assert '<details id="device-raw"><summary>Raw reported state (JSON)</summary>' in page
        missing = web.get("/console/devices/no-such-device")
        assert missing.status_code == 404 and "no device no-such-device" in missing.text
    finally:
        web.close()


def test_device_cursor_moves_for_its_device_only(fleet: SeededFleet) -> None:
    one, other = [d for d in FLEET if d.status == "offline" and d.id > "dev-08"][:2]
    before = {d.id: fleet.registry.device_cursor(device_id=d.id) for d in (one, other)}
    row = fleet.registry.get_device(device_id=one.id)
    fleet.registry.touch_device(device_id=one.id, ts=row["last_seen"] + 5)
    try:
        assert fleet.registry.device_cursor(device_id=one.id) != before[one.id]
        assert fleet.registry.device_cursor(device_id=other.id) == before[other.id]
    finally:
        fleet.registry.touch_device(device_id=one.id, ts=row["last_seen"])
    web = _console(fleet)
    try:
        r = web.get("/console/events", params={"device": "no-such-device"})
        assert r.status_code == 404 and "no device no-such-device" in r.text
    finally:
        web.close()


def test_devices_page_marks_each_drifting_device_and_only_those(fleet: SeededFleet) -> None:
    web = _console(fleet)
    try:
        page = web.get("/console/devices", params={"trouble": "drift", "per_page": 200}).text
        rows = re.findall(r'<tr data-device-id="([^"]+)"', page)
        assert sorted(rows) == sorted(d.id for d in FLEET if d.drift)
        assert page.count('class="trouble drift-marker"') == len(rows)
        plain = web.get("/console/devices", params={"q": "dev-0001", "per_page": 10}).text
        assert "drift-marker" not in plain  # dev-00010..19: none drifts
    finally:
        web.close()
