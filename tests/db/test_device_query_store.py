"""Device-list queries (filters, trouble kinds, sorts, window statistics, overview) on both
engines: the SQL where SQLite and PostgreSQL differ most (JSON paths, boolean sums, byte-order
ranges). A small fleet is written through the registry; every expected answer is computed
from ``FLEET`` below, not hard-coded."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from fleet_server.db import Database
from fleet_server.device_query import DeviceQuery
from fleet_server.errors import InvalidInputError
from fleet_server.registry import Registry
from fleet_server.rollout_store import RolloutStore

NOW = 1_000_000.0


@dataclass(frozen=True)
class Dev:
    id: str
    group: str
    online: bool | None  # None: never seen
    bundle: str | None
    install: str | None = "committed"
    fallback: bool = False
    override_honoured: bool | None = None  # None: no override asked
    drift: bool = False
    windows: tuple[tuple[float, int, int, float | None], ...] = ()  # (age, n, errors, p95)


FLEET = (
    Dev("Cam-A", "lab", True, "vision@1.0.0", windows=((60, 100, 2, 10.0), (30, 300, 0, 20.0))),
    Dev("cam-b", "lab", False, "vision@1.1.0", install="failed", windows=((60, 10, 5, 50.0),)),
    Dev("cam_c", "store", True, "visionary@1.0.0", fallback=True,
        windows=((60, 0, 0, None), (7200, 999, 999, 999.0))),
    Dev("mic-1", "store", True, "audio@2.0.0", override_honoured=False, drift=True),
    Dev("mic-2", "store", False, "audio@2.0.0", install="rolled_back", override_honoured=True),
    Dev("new-1", "store", None, None, install=None),
)


def _state(d: Dev) -> dict[str, object] | None:
    if d.online is None:
        return None
    execution: dict[str, object] = {"fallback": d.fallback}
    if d.override_honoured is not None:
        execution["override"] = {"delegate": "cuda", "honoured": d.override_honoured}
    return {"active": {"execution": execution}, "install": {"state": d.install}}


@pytest.fixture()
def registry(db: Database) -> Registry:
    reg = Registry(db)
    shadow = RolloutStore(db)
    for d in FLEET:
        reg.add_device(device_id=d.id, group=d.group, public_key="", mqtt_secret_hash="h")
        if d.online is not None:
            reg.update_device_state(device_id=d.id, online=d.online, ts=NOW - 100,
                                    state=_state(d) or {}, active_bundle=d.bundle,
                                    delegate="cpu")
        for seq, (age, n, errors, p95) in enumerate(d.windows, 1):
            reg.add_telemetry(device_id=d.id, seq=seq, ts=NOW - age, data={
                "inferences": n, "errors": errors,
                "latency_ms": None if p95 is None else {"p50": p95 / 2, "p95": p95,
                                                        "p99": p95 * 2}})
        if d.online is not None:
            drift = {"x": {"psi": 0.4 if d.drift else 0.01, "drifted": d.drift}}
            shadow.add_shadow_report(device_id=d.id, seq=1, ts=NOW - 60,
                                     candidate_sha256="s" * 64, data={"drift": drift})
    db.run("UPDATE shadow_reports SET received_at = ?", [NOW - 60])
    return reg


def _ids(registry: Registry, **query: object) -> list[str]:
    rows, total = registry.query_devices(query=DeviceQuery(per_page=None, **query), now=NOW)  # type: ignore[arg-type]
    assert total == len(rows)
    return [r["id"] for r in rows]


def _p95(d: Dev) -> float | None:
    ws = [(n, p) for age, n, _, p in d.windows if age <= 900 and n and p is not None]
    return sum(n * p for n, p in ws) / sum(n for n, _ in ws) if ws else None


def test_filters_match_the_seed(registry: Registry) -> None:
    every = sorted(d.id for d in FLEET)  # byte order: upper case first, on both engines
    assert _ids(registry) == every
    assert _ids(registry, q="CAM") == sorted(d.id for d in FLEET if "cam" in d.id.lower())
    assert _ids(registry, q="_") == ["cam_c"]  # a LIKE wildcard taken literally
    assert _ids(registry, group="lab") == ["Cam-A", "cam-b"]
    assert _ids(registry, status="online") == sorted(d.id for d in FLEET if d.online)
    assert _ids(registry, status="offline") == sorted(d.id for d in FLEET if d.online is False)
    assert _ids(registry, status="never") == ["new-1"]
    assert _ids(registry, bundle="vision") == ["Cam-A", "cam-b"]  # not "visionary"
    assert _ids(registry, bundle="audio", version="2.0.0") == ["mic-1", "mic-2"]
    assert _ids(registry, version="1.0.0") == ["Cam-A", "cam_c"]


@pytest.mark.parametrize("trouble", ["failed", "rolled_back", "fallback", "drift", "any"])
def test_each_trouble_kind_finds_exactly_its_devices(registry: Registry, trouble: str) -> None:
    kinds = {
        "failed": {d.id for d in FLEET if d.install == "failed"},
        "rolled_back": {d.id for d in FLEET if d.install == "rolled_back"},
        "fallback": {d.id for d in FLEET if d.fallback or d.override_honoured is False},
        "drift": {d.id for d in FLEET if d.drift},
    }
    want = set().union(*kinds.values()) if trouble == "any" else kinds[trouble]
    assert set(_ids(registry, trouble=trouble)) == want and want
    overview = registry.fleet_overview(now=NOW)
    if trouble != "any":
        assert overview["trouble"][trouble] == len(want)


def test_sorts_window_stats_and_pages(registry: Registry) -> None:
    lat = sorted((d for d in FLEET), key=lambda d: (_p95(d) is None, -(_p95(d) or 0), d.id))
    assert _ids(registry, sort="latency") == [d.id for d in lat]
    errors = {d.id: sum(e for age, _, e, _ in d.windows if age <= 900) for d in FLEET}
    assert _ids(registry, sort="errors") == sorted(errors, key=lambda i: (-errors[i], i))
    assert _ids(registry, sort="-id") == sorted((d.id for d in FLEET), reverse=True)
    stats = registry.device_window_stats(device_ids=[d.id for d in FLEET], since=NOW - 900)
    for d in FLEET:
        p95 = _p95(d)
        got = stats.get(d.id)
        if not [w for w in d.windows if w[0] <= 900]:
            assert got is None
            continue
        assert got is not None and got["errors"] == errors[d.id]
        assert (got["latency_ms"] or {}).get("p95") == pytest.approx(p95) if p95 else \
            got["latency_ms"] is None
    page, total = registry.query_devices(query=DeviceQuery(per_page=2, page=2), now=NOW)
    assert total == len(FLEET) and [r["id"] for r in page] == sorted(d.id for d in FLEET)[2:4]
    past, total = registry.query_devices(query=DeviceQuery(per_page=2, page=9, group="lab"),
                                         now=NOW)
    assert (past, total) == ([], 2)


def test_overview_facets_drift_series_and_cursors(registry: Registry, db: Database) -> None:
    overview = registry.fleet_overview(now=NOW)
    assert (overview["total"], overview["online"], overview["never"], overview["offline"]) == (
        6, 3, 1, 2)
    assert overview["versions"] == {"vision": {"1.0.0": 1, "1.1.0": 1},
                                    "visionary": {"1.0.0": 1}, "audio": {"2.0.0": 2}}
    assert registry.device_facets()["groups"] == ["lab", "store"]
    assert registry.drifted_devices(device_ids=[d.id for d in FLEET], now=NOW) == {"mic-1"}
    series = registry.device_drift_series(device_id="mic-1")
    assert [s["psi"] for s in series] == [{"x": 0.4}]
    # reads change nothing (on PostgreSQL another database's write in the same cluster,
    # e.g. a test on the other worker, moves it spuriously: a few tries)
    tries = [(registry.change_cursor(), registry.device_cursor(device_id="mic-2"),
              registry.change_cursor()) for _ in range(5)]
    assert any(before == after for before, _, after in tries)
    cursor, device, _ = tries[-1]
    other = Registry(db.url)  # another process's pool
    try:
        other.touch_device(device_id="mic-1", ts=NOW)
    finally:
        other.close()
    assert registry.change_cursor() != cursor
    assert registry.device_cursor(device_id="mic-2") == device  # not this device
    registry.add_telemetry(device_id="mic-2", seq=1, ts=NOW, data=json.loads('{"n": 1}'))
    assert registry.device_cursor(device_id="mic-2") != device


def test_bad_queries_are_refused_before_any_sql(registry: Registry) -> None:
    for bad in ({"sort": "id; drop table devices"}, {"status": "sideways"}, {"per_page": 0}):
        with pytest.raises(InvalidInputError):
            DeviceQuery(**bad)  # type: ignore[arg-type]
    assert len(_ids(registry)) == len(FLEET)
