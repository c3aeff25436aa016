"""The fleet server's Prometheus metrics (issue 11): devices by status, the stage and gate
values of active rollouts, and HTTP request metrics by route template, scraped from a real
app (real SQLite) and parsed with ``prometheus_client``'s own parser, checked against what
the REST API reports."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from fleet_server.app import create_app
from fleet_server.config import ServerSettings
from fleet_server.rollouts.plan import Plan
from fleet_server.rollouts.policy import StageMetrics, evaluate

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

PLAN: dict[str, Any] = {"rollback_on_halt": True, "stages": [
    {"name": "shadow 50%", "kind": "shadow", "percent": 50,
     "gates": {"min_devices": 1, "min_samples": 10, "max_latency_ratio": 1.5,
               "sequential": {"agreement": {"halt_below": 0.9, "promote_above": 0.95}}}},
    {"name": "100%", "kind": "canary", "percent": 100,
     "gates": {"min_devices": 1, "min_samples": 0, "min_agreement": None}},
]}


def scrape(client: TestClient) -> Samples:
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A server with three devices (online, offline, never connected) and a paused rollout
    whose shadow stage was evaluated once with the real policy."""
    root: Path = tmp_path_factory.mktemp("metrics")
    app = create_app(ServerSettings(data_dir=root / "fleet", port=0, mqtt_port=0))
    with TestClient(app) as client:
        services = app.state.services
        client.headers["Authorization"] = f"Bearer {services.data_dir.admin_token}"
        for device_id in ("dev-on", "dev-off", "dev-never"):
            services.registry.add_device(device_id=device_id, group="lab", public_key="k",
                                         mqtt_secret_hash="h")
        for device_id, online in (("dev-on", True), ("dev-off", False)):
            services.registry.update_device_state(device_id=device_id, online=online,
                                                  ts=time.time(), state={},
                                                  active_bundle="m@1.0.0", delegate="cpu")
        plan = Plan.from_dict(PLAN)
        now = time.time()
        store = services.rollout_store
        store.add_rollout(rollout_id="ro-m", bundle_id="0" * 64, bundle_ref="m@2.0.0",
                          target_kind="group", target_value="lab",
                          devices=["dev-on", "dev-off"], plan=plan.to_dict(),
                          created_by="test", now=now)
        measured = StageMetrics(cohort=2, reporting=1, excluded=0, samples=40,
                                latency_ratio=1.2, sequential={"agreement": [39.0, 40.0]})
        ev = evaluate(plan.stages[0], measured, 30.0)
        store.update_rollout(rollout_id="ro-m", now=now, state="paused",
                             last_evaluation={"stage_index": 0, "stage": "shadow 50%",
                                              "at": now, **ev.to_dict()})
        yield client


def test_devices_by_status_match_the_device_list(fleet: TestClient) -> None:
    m = scrape(fleet)
    for status in ("online", "offline", "never"):
        listed = fleet.get("/api/v1/devices", params={"status": status})
        assert m[("edgefleet_devices", (("status", status),))] == \
            int(listed.headers["X-Total-Count"]) == 1
    assert m[("edgefleet_devices_online", ())] == 1


def test_rollout_stage_and_gates_match_the_rollout_api(fleet: TestClient) -> None:
    m = scrape(fleet)
    api = fleet.get("/api/v1/rollouts/ro-m").json()
    rid = (("rollout", "ro-m"),)
    assert m[("edgefleet_rollout_info", (("bundle", "m@2.0.0"), ("rollout", "ro-m"),
                                         ("stage", api["stage"]), ("state", "paused")))] == 1
    assert m[("edgefleet_rollout_stage_index", rid)] == api["stage_index"] == 0
    assert m[("edgefleet_rollout_stages", rid)] == len(api["plan"]["stages"])
    assert m[("edgefleet_rollouts", (("state", "paused"),))] == 1
    assert m[("edgefleet_rollouts", (("state", "running"),))] == 0
    ev = api["last_evaluation"]
    assert m[("edgefleet_rollout_last_evaluation_timestamp_seconds", rid)] == \
        pytest.approx(ev["at"])
    for outcome in ("wait", "pass", "fail"):
        assert m[("edgefleet_rollout_evaluation_outcome",
                  (("outcome", outcome), ("rollout", "ro-m")))] == (outcome == ev["outcome"])
    gates = {g["name"]: g for g in ev["gates"]}
    assert {"min_samples", "latency_ratio_p95", "agreement"} <= set(gates)
    for name, gate in gates.items():
        key = (("gate", name), ("rollout", "ro-m"))
        for field, metric in (("measured", "value"), ("threshold", "threshold"),
                              ("lower", "interval_lower"), ("upper", "interval_upper"),
                              ("n", "samples"), ("halt", "halt_threshold")):
            if gate[field] is None:
                assert (f"edgefleet_rollout_gate_{metric}", key) not in m
            else:
                assert m[(f"edgefleet_rollout_gate_{metric}", key)] == \
                    pytest.approx(gate[field]), (name, field)
        if gate["ok"] is not None:
            assert m[("edgefleet_rollout_gate_passing", key)] == gate["ok"]
    seq = gates["agreement"]  # the sequential gate: interval, sample count and decision
    assert seq["n"] == 40 and seq["lower"] < seq["measured"] < seq["upper"]
    for decision in ("continue", "pass", "halt"):
        assert m[("edgefleet_rollout_gate_decision", (("decision", decision),
                                                      ("gate", "agreement"),
                                                      ("rollout", "ro-m")))] == \
            (decision == seq["decision"])
    assert m[("edgefleet_rollout_gate_value", (("gate", "latency_ratio_p95"),
                                               ("rollout", "ro-m")))] == 1.2


def test_http_requests_are_counted_by_route_template_not_raw_path(fleet: TestClient) -> None:
    route = "/api/v1/devices/{device_id}"
    before = scrape(fleet)

    def count(status: str, r: str = route, method: str = "GET") -> float:
        key = (("method", method), ("route", r), ("status", status))
        return scrape(fleet).get(("edgefleet_http_requests_total", key), 0.0) - \
            before.get(("edgefleet_http_requests_total", key), 0.0)

    for device_id in ("dev-on", "dev-off"):
        assert fleet.get(f"/api/v1/devices/{device_id}").status_code == 200
    assert fleet.get("/api/v1/devices/nosuch").status_code == 404
    assert fleet.get("/no/such/page").status_code == 404
    assert fleet.request("BREW", "/api/v1/devices/dev-on").status_code == 405
    assert count("200") == 2 and count("404") == 1
    assert count("404", "unmatched") == 1
    after = scrape(fleet)
    assert after[("edgefleet_http_request_duration_seconds_count",
                  (("method", "GET"), ("route", route)))] - \
        before.get(("edgefleet_http_request_duration_seconds_count",
                    (("method", "GET"), ("route", route))), 0.0) == 3
    # an unknown method is one label value, and no raw path is ever a label
    assert any(k[0] == "edgefleet_http_requests_total" and ("method", "other") in k[1]
               for k in after)
    routes = {dict(k[1]).get("route") for k in after if k[0].startswith("edgefleet_http_")}
    assert not routes & {"/api/v1/devices/dev-on", "/api/v1/devices/nosuch", "/no/such/page"}
    assert "/metrics" in routes


def test_docs_name_exactly_the_fleet_metrics_the_server_exports(fleet: TestClient) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    section = doc[doc.index("## Fleet server metrics"):]
    assert fleet.get("/api/v1/devices").status_code == 200  # an HTTP request counted
    families = list(text_string_to_metric_families(fleet.get("/metrics").text))
    exported = {f.name for f in families} | {s.name for f in families for s in f.samples}
    documented = set(re.findall(r"\bedgefleet_[a-z0-9_]+", section))
    assert documented - exported == set()
    ours = re.compile(r"edgefleet_(devices|rollout|http)")
    public = {f.name + ("_total" if f.type == "counter" else "") for f in families
              if ours.match(f.name) and not f.name.endswith("_created")}  # start timestamps
    assert public - documented == set()
