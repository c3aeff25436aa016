"""The rollout driver reacts to what devices store instead of waiting for its poll interval
(``fleet_server.rollouts.driver.REACT_S``): real server, embedded broker, real SQLite, six
simulated devices."""

from __future__ import annotations

from pathlib import Path

from device_agent.simulator import SimFleet
from fleet_server.api_client import FleetClient
from fleet_server.config import ServerSettings
from fleet_server.serve import start_server

from .sim_helpers import publish, wait_for

DEVICES = 6
PLAN = {"stages": [
    {"name": "canary 50%", "kind": "canary", "percent": 50, "deadline_s": 600,
     "gates": {"min_devices": 3, "min_samples": 0, "min_agreement": None}},
    {"name": "100%", "kind": "canary", "percent": 100, "deadline_s": 600,
     "gates": {"min_devices": DEVICES, "min_samples": 0, "min_agreement": None}},
]}


def test_rollout_with_an_hour_long_poll_completes_on_the_devices_reports(
        tmp_path: Path, sample_onnx: Path) -> None:
    """With ``--rollout-tick 3600`` no poll tick comes during the test: the two stages pass
    only because the driver re-evaluates when reports are stored, and the second stage's
    instructions go out in the tick that passed the first. The gates are the plan's: the
    100% stage completes only once every device runs v1 and has reported on it."""
    settings = ServerSettings(data_dir=tmp_path / "fleet", port=0, mqtt_port=0,
                              rollout_tick_s=3600, insecure=True)
    with start_server(settings) as server, \
            FleetClient(server.http_url, server.admin_token) as client:
        publish(client, tmp_path, sample_onnx, ["1.0.0"])
        fleet = SimFleet(server=server.http_url, admin_token=server.admin_token,
                         count=DEVICES, group="sim", report_interval_s=0.3).start()
        try:
            fleet.wait_connected()
            rid = client.create_rollout("sample@1.0.0", group="sim", plan=PLAN)["id"]
            done = wait_for(lambda: (r := client.get_rollout(rid))["state"] in (
                "completed", "halted") and r, 60, "rollout finished")
            assert done["state"] == "completed", done["last_evaluation"]
            decisions = done["decisions"]
            assert [d["action"] for d in decisions] == ["created", "advance", "complete"]
            assert fleet.active_refs() == {"sample@1.0.0": DEVICES}
            # the 100% stage's devices were instructed when the canary stage passed
            advanced = decisions[1]["ts"]
            stored = server.services.rollout_store.rollout_devices(rollout_id=rid)
            second = [d for d in stored.values() if d["stage_index"] == 1]
            assert len(second) == DEVICES // 2
            assert all(abs(float(d["assigned_at"]) - advanced) < 1.0 for d in second), second
            final = decisions[2]["data"]["metrics"]
            assert final["reporting"] == DEVICES and final["cohort"] == DEVICES
        finally:
            fleet.stop()
