"""A shadow stage paces its devices and says "not enough samples yet" rather than deciding
on too few: a real server (in process, real SQLite, embedded broker) and three simulated
devices that verify every signed instruction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from device_agent.simulator import SimFleet
from fleet_server.api_client import FleetClient
from fleet_server.config import ServerSettings
from fleet_server.rollouts.pace import shadow_pace
from fleet_server.rollouts.plan import Plan
from fleet_server.serve import start_server

from .sim_helpers import publish, wait_for

DEVICES = 3
PLAN: dict[str, Any] = {"stages": [
    {"name": "shadow all", "kind": "shadow", "percent": 100, "deadline_s": 600,
     "gates": {"min_devices": DEVICES, "min_samples": 0, "max_latency_ratio": None,
               "sequential": {"agreement": {"halt_below": 0.98, "promote_above": 0.995}}}},
    {"name": "100%", "kind": "canary", "percent": 100, "gates": {"min_agreement": None}}]}


def test_shadow_stage_asks_its_pace_and_shows_not_enough_samples_yet_instead_of_deciding(
        tmp_path: Path, sample_onnx: Path) -> None:
    settings = ServerSettings(data_dir=tmp_path / "fleet", port=0, mqtt_port=0,
                              rollout_tick_s=0.3, insecure=True)
    with start_server(settings) as server, \
            FleetClient(server.http_url, server.admin_token) as client:
        publish(client, tmp_path, sample_onnx, ["1.0.0", "2.0.0"])
        fleet = SimFleet(server=server.http_url, admin_token=server.admin_token,
                         count=DEVICES, group="paced", report_interval_s=0.5,
                         inferences_per_report=20).start()
        try:
            fleet.wait_connected()
            client.deploy("sample@1.0.0", group="paced")
            wait_for(lambda: fleet.active_refs().get("sample@1.0.0") == DEVICES, 60, "v1")
            wait_for(lambda: all(d["active_bundle"] == "sample@1.0.0"
                                 for d in client.list_devices("paced")), 60, "server sees v1")
            rid = client.create_rollout("sample@2.0.0", group="paced", plan=PLAN)["id"]
            asked = shadow_pace(Plan.from_dict(PLAN).stages[0], DEVICES)

            # every device reports samples, yet the interval is far from both lines: wait
            row = wait_for(lambda: (r := client.get_rollout(rid))["last_evaluation"] and
                           r["last_evaluation"]["reason"].startswith("not enough samples")
                           and r, 30, "the stage to say not enough samples yet")
            ev = row["last_evaluation"]
            assert row["state"] == "running" and row["stage_index"] == 0
            assert ev["outcome"] == "wait" and ev["metrics"]["reporting"] == DEVICES
            gate = next(g for g in ev["gates"] if g["name"] == "agreement")
            assert gate["decision"] == "continue" and gate["ok"] is None and gate["n"] > 0
            assert gate["lower"] < 0.98 and gate["upper"] > 0.995
            assert [d["action"] for d in row["decisions"]] == ["created"]  # no decision

            # the pace the stage needs went out in each signed instruction, and is shown
            assert ev["metrics"]["pace_asked"] == asked
            assert ev["metrics"]["pace_achieved"] > 0
            assert sorted(d.shadow_pace for d in fleet.devices) == [asked] * DEVICES
            with httpx.Client(base_url=server.http_url, timeout=10) as console:
                console.post("/console/login", data={"token": server.admin_token})
                page = console.get(f"/console/rollouts/{rid}")
                assert page.status_code == 200
                assert "not enough samples yet" in page.text
            assert client.rollout_action(rid, "abort")["state"] == "aborted"
        finally:
            fleet.stop()
