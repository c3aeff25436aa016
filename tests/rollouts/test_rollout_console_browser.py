"""The rollout console in a real headless Chromium (Playwright): create a rollout, watch it
advance, see a halted rollout's failing gate with its numbers, and a sequential gate's
interval narrowing until it decides; the uPlot charts of progress, shadow agreement, latency
ratio and gate intervals drawn with axes and one point per decision, bucket or interval."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from device_agent.simulator import Behaviour, SimFleet
from fleet_server.api_client import FleetClient
from fleet_server.config import ServerSettings
from fleet_server.serve import start_server
from tests.e2e.browser import chromium_page, drawn_chart, serious_axe_violations

from .sim_helpers import publish, wait_for

pytestmark = pytest.mark.browser

PLAN = {"stages": [
    {"name": "shadow 10%", "kind": "shadow", "percent": 10, "deadline_s": 60,
     "gates": {"min_devices": 2, "min_samples": 100, "min_agreement": 0.95}},
    {"name": "50%", "kind": "canary", "percent": 50, "deadline_s": 60,
     "gates": {"min_devices": 5, "min_samples": 100, "min_agreement": None}},
    {"name": "100%", "kind": "canary", "percent": 100, "deadline_s": 60,
     "gates": {"min_devices": 15, "min_samples": 0, "min_agreement": None}},
]}
SEQUENTIAL_PLAN = {"stages": [
    {"name": "shadow 10%", "kind": "shadow", "percent": 10, "deadline_s": 60,
     "gates": {"min_devices": 2, "min_samples": 0, "sequential": {
         "alpha": 0.05, "beta": 0.05,
         "agreement": {"halt_below": 0.85, "promote_above": 0.95}}}},
    PLAN["stages"][-1],
]}


def _submit_rollout(page, bundle: str, plan: dict) -> None:  # noqa: ANN001
    """Create a rollout of ``bundle`` to the ``sim`` group from the console's form."""
    page.click("#nav-rollouts")
    page.select_option("#rollout-bundle", bundle)
    page.fill("#rollout-target", "sim")
    page.fill("#rollout-plan", json.dumps(plan))
    page.click("#rollout-submit")


def _wait_state(page, url: str, states: tuple[str, ...], timeout: float = 60) -> str:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while True:
        page.goto(url)
        state = page.get_attribute("#rollout-state", "data-state")
        if state in states or time.monotonic() > deadline:
            return str(state)
        time.sleep(0.5)


def test_console_creates_rollout_watches_it_advance_and_shows_failing_gate(
        tmp_path: Path, sample_onnx: Path) -> None:
    settings = ServerSettings(data_dir=tmp_path / "fleet", port=0, mqtt_port=0,
                              rollout_tick_s=0.3, insecure=True)
    with start_server(settings) as server, \
            FleetClient(server.http_url, server.admin_token) as client:
        publish(client, tmp_path, sample_onnx, ["1.0.0", "2.0.0", "3.0.0"])
        fleet = SimFleet(server=server.http_url, admin_token=server.admin_token, count=20,
                         behaviours={"sample@2.0.0": Behaviour(disagree=0.2)},
                         report_interval_s=1.0, inferences_per_report=50).start()
        try:
            fleet.wait_connected()
            client.deploy("sample@1.0.0", group="sim")
            wait_for(lambda: all(d["active_bundle"] == "sample@1.0.0"
                                 for d in client.list_devices("sim")), 60, "v1 everywhere")
            with chromium_page() as page:
                page.goto(server.http_url + "/console/login")
                page.fill("input[name=token]", server.admin_token)
                page.click("button[type=submit]")
                # a good candidate: created from the form, advances to completed
                _submit_rollout(page, "sample@3.0.0", PLAN)
                url = page.url
                assert "/console/rollouts/ro-" in url
                assert _wait_state(page, url, ("completed", "halted")) == "completed"
                actions = page.eval_on_selector_all(
                    ".decision-row", "rows => rows.map(r => r.dataset.action)")
                assert actions[::-1] == ["created", "advance", "advance", "complete"]
                progress = drawn_chart(page, "chart-progress")  # one step per decision
                assert (progress["points"], progress["axes"]) == (len(actions), 2)
                assert "share in current stage" in str(progress["legend"])
                # a candidate that disagrees on 20% of inputs: halted, gate and numbers
                _submit_rollout(page, "sample@2.0.0", PLAN)
                assert _wait_state(page, page.url, ("completed", "halted")) == "halted"
                halted = page.get_attribute("#rollout-id", "data-rollout-id") or ""
                row = page.locator(".gate-row[data-gate=agreement]")
                assert row.get_attribute("data-ok") == "False"
                assert "gate-fail" in (row.get_attribute("class") or "")
                measured = float(row.locator(".measured").inner_text())
                assert 0.7 < measured < 0.9
                assert row.locator(".threshold").inner_text() == "0.95"
                assert "agreement" in page.inner_text("#evaluation-reason")
                before = _shadow_rows(server, halted)  # a late report may still arrive
                page.click("#compare-link")
                agreement = drawn_chart(page, "chart-agreement")
                step = float(page.get_attribute("#compare-step", "data-step") or 0)
                low, high = (len({math.floor(r["ts"] / step) for r in rows})
                             for rows in (before, _shadow_rows(server, halted)))
                assert 0 < low <= agreement["points"] <= high  # one point per bucket
                assert agreement["axes"] == 2
                assert "min_agreement gate" in str(agreement["legend"])
                assert drawn_chart(page, "chart-latency-ratio")["points"] == agreement["points"]
                assert serious_axe_violations(page) == []
                page.click("#nav-audit")
                assert page.locator(".audit-row[data-action='rollout.halt']").count() == 1
                # the same candidate under a sequential gate: the interval narrows report
                # by report until it lies below the halt line, and the page says when
                _submit_rollout(page, "sample@2.0.0", SEQUENTIAL_PLAN)
                assert _wait_state(page, page.url, ("completed", "halted")) == "halted"
                sequential = page.get_attribute("#rollout-id", "data-rollout-id") or ""
                stored = [h for h in server.services.rollout_store.gate_history(
                    rollout_id=sequential) if (h["stage_index"], h["gate"]) == (0, "agreement")]
                assert len(stored) >= 2
                interval = drawn_chart(page, "chart-interval-0-agreement")
                assert (interval["points"], interval["series"], interval["axes"],
                        interval["markers"]) == (len(stored), 3, 2, 1)  # decision marked
                assert all(k in str(interval["legend"]) for k in ("upper", "lower", "halt"))
                figure = page.locator(".interval-chart[data-gate=agreement]")
                decided = figure.locator(".interval-decided")
                assert decided.get_attribute("data-decision") == "halt"
                assert "decided halt at" in decided.inner_text()
                row = page.locator(".gate-row[data-gate=agreement] .interval")
                assert float(row.get_attribute("data-upper") or 1) < 0.85
                assert float(row.get_attribute("data-n") or 0) > 0
                assert serious_axe_violations(page) == []
        finally:
            fleet.stop()


def _shadow_rows(server, rollout_id: str) -> list[dict]:  # noqa: ANN001 - a RunningServer
    """The rollout's shadow reports as the server stored them (what its charts are made of)."""
    store = server.services.rollout_store
    row = store.get_rollout(rollout_id=rollout_id)
    return store.shadow_reports(candidate_sha256=row["bundle_id"], device_ids=row["devices"],
                                since=float(row["created_at"]))
