"""Filters, search, sort and pages of GET /api/v1/devices and `fleet-server devices` on a
10,000-device fleet; the console overview agrees with the API; bad input changes nothing."""

from __future__ import annotations

import json
import re
import sqlite3
import time

import pytest

from fleet_server.cli import main as fleet_server_cli
from fleet_server.device_query import DeviceQuery

from .conftest import SeededFleet
from .fleet_seed import FLEET, N_DEVICES, window_errors, window_p95


def _ids(fleet: SeededFleet, **params: object) -> tuple[list[str], int]:
    r = fleet.api.get("/api/v1/devices", params={"per_page": 1000, **params})
    assert r.status_code == 200, r.text
    total = int(r.headers["X-Total-Count"])
    ids = [d["id"] for d in r.json()]
    page = 1
    while len(ids) < total:
        page += 1
        more = fleet.api.get("/api/v1/devices",
                             params={"per_page": 1000, "page": page, **params}).json()
        assert more, f"page {page} empty before {total} rows"
        ids += [d["id"] for d in more]
    return ids, total


def _inside(fleet: SeededFleet) -> float:
    """How old a seeded window may be and still count in the 15-minute window now."""
    return 900.0 - (time.time() - fleet.now)


EXPECTED = {
    "group=lab": ({"group": "lab"}, lambda d: d.group == "lab"),
    "status=online": ({"status": "online"}, lambda d: d.status == "online"),
    "status=offline": ({"status": "offline"}, lambda d: d.status == "offline"),
    "status=never": ({"status": "never"}, lambda d: d.status == "never"),
    "bundle=vision": ({"bundle": "vision"}, lambda d: (d.bundle or "").startswith("vision@")),
    "bundle+version": ({"bundle": "vision", "version": "1.1.0"},
                       lambda d: d.bundle == "vision@1.1.0"),
    "version only": ({"version": "2.0.0"}, lambda d: (d.bundle or "").endswith("@2.0.0")),
    "delegate=cuda": ({"delegate": "CUDAExecutionProvider"},
                      lambda d: d.delegate == "CUDAExecutionProvider"),
    "trouble=failed": ({"trouble": "failed"}, lambda d: d.install == "failed"),
    "trouble=rolled_back": ({"trouble": "rolled_back"}, lambda d: d.install == "rolled_back"),
    "trouble=fallback": ({"trouble": "fallback"}, lambda d: d.fallback),
    "trouble=drift": ({"trouble": "drift"}, lambda d: d.drift),
    "trouble=any": ({"trouble": "any"}, lambda d: d.install in ("failed", "rolled_back")
                    or d.fallback or d.drift),
    "search 0042": ({"q": "0042"}, lambda d: "0042" in d.id),
    "combined": ({"group": "store-a", "status": "online", "bundle": "audio"},
                 lambda d: d.group == "store-a" and d.status == "online"
                 and (d.bundle or "").startswith("audio@")),
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_each_filter_returns_exactly_the_matching_devices(fleet: SeededFleet, case: str) -> None:
    params, match = EXPECTED[case]
    ids, total = _ids(fleet, **params)
    expected = sorted(d.id for d in FLEET if match(d))
    assert expected, "the seed must give every filter something to find"
    assert (ids, total) == (expected, len(expected))


def test_pages_walk_every_device_once_in_order(fleet: SeededFleet) -> None:
    ids, total = _ids(fleet)
    assert total == N_DEVICES and ids == sorted(d.id for d in FLEET)
    r = fleet.api.get("/api/v1/devices", params={"per_page": 50, "page": 3})
    assert [d["id"] for d in r.json()] == ids[100:150]
    assert (r.headers["X-Page"], r.headers["X-Per-Page"]) == ("3", "50")
    past = fleet.api.get("/api/v1/devices", params={"per_page": 50, "page": 999})
    assert past.status_code == 200 and past.json() == []


def test_latency_is_merged_over_15_minutes_not_taken_from_the_idle_last_window(
        fleet: SeededFleet) -> None:
    device = FLEET[42]
    assert device.windows[-1][1] == 0, "its last window is idle"
    row = fleet.api.get("/api/v1/devices", params={"q": device.id}).json()[0]
    window = row["window"]
    inside = _inside(fleet)
    assert window["latency_ms"]["p95"] == pytest.approx(window_p95(device, inside))
    assert window["errors"] == window_errors(device, inside)
    assert window["inferences"] == sum(n for age, n, _, _ in device.windows if age <= inside)
    assert "request-count-weighted" in window["latency_method"]
    # the old fields are still there, unchanged (compatible response shape)
    assert {"id", "group", "online", "last_seen", "active_bundle", "delegate", "state",
            "telemetry"} <= set(row)


def test_sort_by_latency_and_by_errors_puts_the_worst_devices_first(fleet: SeededFleet) -> None:
    slow = fleet.api.get("/api/v1/devices", params={"sort": "latency", "per_page": 20}).json()
    inside = _inside(fleet)
    worst = sorted((d for d in FLEET if window_p95(d, inside) is not None),
                   key=lambda d: (-(window_p95(d, inside) or 0), d.id))[:20]
    assert len(worst) == 20
    assert [d["id"] for d in slow] == [d.id for d in worst]
    errs = fleet.api.get("/api/v1/devices", params={"sort": "errors", "per_page": 20}).json()
    most = sorted(FLEET, key=lambda d: (-window_errors(d, inside), d.id))[:20]
    assert [d["id"] for d in errs] == [d.id for d in most]
    stale = fleet.api.get("/api/v1/devices", params={"sort": "-last_seen", "per_page": 5,
                                                     "status": "offline"}).json()
    seen = [d["last_seen"] for d in stale]
    assert seen == sorted(seen)


@pytest.mark.parametrize(("params", "message"), [
    ({"status": "asleep"}, "status must be one of online, offline, never"),
    ({"trouble": "bad"}, "trouble must be one of"),
    ({"sort": "name"}, "sort must be one of id, last_seen, errors, latency"),
    ({"per_page": 5000}, "per_page must be an integer from 1 to 1000"),
    ({"page": 0}, "page must be an integer >= 1"),
    ({"q": "x" * 300}, "q must be printable text of at most 200 characters"),
])
def test_bad_filters_are_refused_with_a_precise_error_and_change_nothing(
        fleet: SeededFleet, params: dict[str, object], message: str) -> None:
    before = fleet.api.get("/api/v1/devices", params={"q": "dev-099"}).json()
    r = fleet.api.get("/api/v1/devices", params=params)
    assert r.status_code == 422 and message in r.text
    assert fleet.api.get("/api/v1/devices", params={"q": "dev-099"}).json() == before


def test_overview_counts_equal_what_the_api_reports(fleet: SeededFleet) -> None:
    web = fleet.api
    page = web.get("/console/", headers={"Authorization": f"Bearer {fleet.server.admin_token}"})
    if page.status_code != 200 or "Fleet overview" not in page.text:  # the console uses a cookie
        web.post("/console/login", data={"token": fleet.server.admin_token})
        page = web.get("/console/")
    assert "Fleet overview" in page.text
    counts = dict(re.findall(r'id="(?:count|trouble)-(\w+)" data-count="(\d+)"', page.text))
    assert set(counts) == {"online", "offline", "never", "failed", "rolled_back", "fallback",
                           "drift"}
    for key, n in counts.items():
        param = "status" if key in ("online", "offline", "never") else "trouble"
        r = web.get("/api/v1/devices", params={param: key, "per_page": 1})
        assert int(r.headers["X-Total-Count"]) == int(n), key
    assert sum(int(counts[k]) for k in ("online", "offline", "never")) == N_DEVICES
    versions = re.findall(r'data-bundle="([^"]+)" data-version="([^"]+)" data-count="(\d+)"',
                          page.text)
    for name, version, n in versions:
        r = web.get("/api/v1/devices", params={"bundle": name, "version": version,
                                               "per_page": 1})
        assert int(r.headers["X-Total-Count"]) == int(n)
    assert {f"{n}@{v}" for n, v, _ in versions} == {d.bundle for d in FLEET if d.bundle}
    for rollout_id in fleet.rollouts:
        assert f'data-rollout-id="{rollout_id}"' in page.text


def test_cli_devices_flags_filter_like_the_api(fleet: SeededFleet, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["devices", "--server", fleet.url, "--token", fleet.server.admin_token]
    assert fleet_server_cli([*base, "--status", "never", "--group", "lab", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [d["id"] for d in rows] == sorted(d.id for d in FLEET
                                             if d.status == "never" and d.group == "lab")
    assert fleet_server_cli([*base, "--trouble", "failed", "--sort", "latency",
                             "--per-page", "3"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["DEVICE", "GROUP", "STATUS"] and len(table) == 4
    assert fleet_server_cli([*base, "--sort", "nonsense"]) == 1
    assert "sort must be one of" in capsys.readouterr().err


def test_every_filter_is_served_by_an_index_not_a_scan_of_devices(fleet: SeededFleet) -> None:
    conn = sqlite3.connect(fleet.server.services.data_dir.registry_path)
    try:
        for sql, args in [
            ("SELECT id FROM devices d WHERE d.group_name = ?", ["lab"]),
            ("SELECT id FROM devices d WHERE d.active_bundle >= ? AND d.active_bundle < ?",
             ["vision@", "visionA"]),
            ("SELECT id FROM devices d WHERE d.online = 1", []),
            ("SELECT id FROM devices d WHERE d.delegate = ?", ["x"]),
            ("SELECT device_id FROM telemetry WHERE ts >= ?", [0]),
        ]:
            plan = " ".join(str(r[-1]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
            assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, (sql, plan)
    finally:
        conn.close()
    assert DeviceQuery(sort="-errors").sort == "-errors"
