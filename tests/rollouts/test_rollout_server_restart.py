"""A server restart in the middle of a rollout of 200 simulated devices resumes it: the
rollout's state lives in the registry, not in memory."""

from __future__ import annotations

import time
from pathlib import Path

from fleet_server.api_client import FleetClient
from fleet_server.config import ServerSettings
from fleet_server.serve import RunningServer, ServerStartError, start_server

from .sim_helpers import FAST_PLAN, free_fixed_port, wait_for
from .test_rollouts_simulated_fleet import DEVICES, _fleet_on_v1, _settings


def _restart(settings: ServerSettings) -> RunningServer:
    """Start the server again on its old MQTT port, with a few tries (the last one's error
    raised). The port lies below the ephemeral range (``free_fixed_port``): CI twice found an
    ephemeral one held after the stop, most likely by one of the 200 reconnecting devices
    given that very port for its own connect and connected to itself."""
    for _ in range(10):
        try:
            return start_server(settings)
        except ServerStartError:
            time.sleep(0.5)
    return start_server(settings)


def test_server_restart_mid_rollout_resumes(tmp_path: Path, sample_onnx: Path) -> None:
    settings = _settings(tmp_path / "fleet", mqtt_port=free_fixed_port())
    server = start_server(settings)
    client = FleetClient(server.http_url, server.admin_token)
    fleet = _fleet_on_v1(server, client, tmp_path, sample_onnx, {})
    try:
        plan = {**FAST_PLAN, "stages": [dict(s) for s in FAST_PLAN["stages"]]}
        plan["stages"][2]["gates"] = {**plan["stages"][2]["gates"], "min_samples": 100_000}
        rid = client.create_rollout("sample@2.0.0", group="sim", plan=plan)["id"]
        wait_for(lambda: client.get_rollout(rid)["stage_index"] == 2, 45, "stage 25%")
        client.close()
        server.stop()
        server = _restart(_settings(tmp_path / "fleet", mqtt_port=settings.mqtt_port))
        client = FleetClient(server.http_url, server.admin_token)
        again = client.get_rollout(rid)
        assert again["state"] == "running" and again["stage_index"] == 2
        assert [d["action"] for d in again["decisions"]] == ["created", "advance", "advance"]
        client.rollout_action(rid, "promote")  # the operator accepts the 25% stage
        done = wait_for(lambda: (r := client.get_rollout(rid))["state"] in (
            "completed", "halted") and r, 60, "rollout finished after restart")
        assert done["state"] == "completed", done["last_evaluation"]
        assert [d["action"] for d in done["decisions"]][-2:] == ["promote", "complete"]
        assert fleet.active_refs() == {"sample@2.0.0": DEVICES}
    finally:
        fleet.stop()
        client.close()
        server.stop()
