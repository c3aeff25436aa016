"""Gated rollouts against 200 simulated devices on the embedded broker (real server, real
SQLite, real MQTT; the devices are real paho clients speaking protocol 1)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from device_agent.simulator import Behaviour, SimFleet
from fleet_server.api_client import FleetClient
from fleet_server.config import ServerSettings
from fleet_server.serve import RunningServer, start_server

from .sim_helpers import FAST_PLAN, publish, wait_for

DEVICES = 200


def _settings(data: Path, mqtt_port: int = 0) -> ServerSettings:
    return ServerSettings(data_dir=data, port=0, mqtt_port=mqtt_port, rollout_tick_s=0.3, insecure=True)


def _fleet_on_v1(server: RunningServer, client: FleetClient, tmp: Path, model: Path,
                 behaviours: dict[str, Behaviour]) -> SimFleet:
    publish(client, tmp, model, ["1.0.0", "2.0.0", "3.0.0"])
    fleet = SimFleet(server=server.http_url, admin_token=server.admin_token, count=DEVICES,
                     group="sim", behaviours=behaviours, report_interval_s=2.0,
                     inferences_per_report=50).start()
    fleet.wait_connected()
    client.deploy("sample@1.0.0", group="sim")
    wait_for(lambda: fleet.active_refs()["sample@1.0.0"] == DEVICES, 120, "v1 everywhere")
    wait_for(lambda: all(d["active_bundle"] == "sample@1.0.0"
                         for d in client.list_devices("sim")), 90, "server sees v1")
    return fleet


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory,
           sample_onnx: Path) -> Iterator[tuple[RunningServer, FleetClient, SimFleet]]:
    tmp = tmp_path_factory.mktemp("rollouts")
    with start_server(_settings(tmp / "fleet")) as server, \
            FleetClient(server.http_url, server.admin_token) as client:
        fleet = _fleet_on_v1(server, client, tmp, sample_onnx,
                             {"sample@2.0.0": Behaviour(disagree=0.2)})
        try:
            yield server, client, fleet
        finally:
            fleet.stop()


def test_candidate_disagreeing_on_20_percent_halts_in_shadow_and_devices_return(
        shared: tuple[RunningServer, FleetClient, SimFleet]) -> None:
    server, client, fleet = shared
    created = client.create_rollout("sample@2.0.0", group="sim", plan=FAST_PLAN)
    rid = created["id"]
    halted = wait_for(lambda: (r := client.get_rollout(rid))["state"] == "halted" and r,
                      45, "rollout halted")
    assert halted["stage_index"] == 0
    failing = [g for g in halted["last_evaluation"]["gates"] if g["ok"] is False]
    assert [g["name"] for g in failing] == ["agreement"]
    assert 0.75 <= failing[0]["measured"] <= 0.85 and failing[0]["threshold"] == 0.95
    actions = [d["action"] for d in halted["decisions"]]
    assert actions == ["created", "halt", "rollback"]
    shadowed = [d for d in halted["devices"]]
    assert len(shadowed) == 10
    assert [d["role"] for d in shadowed] == ["rollback"] * 10, halted["decisions"]
    ids = {d["device_id"] for d in shadowed}
    sims = {d.device_id: d for d in fleet.devices}
    # the shadowed devices drop the candidate and keep serving the previous bundle
    wait_for(lambda: all(sims[i].shadow is None for i in ids), 30, "shadow cleared")
    assert all(sims[i].active and sims[i].active.version == "1.0.0" for i in ids)
    assert fleet.active_refs() == {"sample@1.0.0": DEVICES}
    audit = client.audit()
    assert {"rollout.created", "rollout.halt", "rollout.rollback"} <= {a["action"] for a in audit}


def test_good_candidate_reaches_100_percent(
        shared: tuple[RunningServer, FleetClient, SimFleet]) -> None:
    server, client, fleet = shared
    rid = client.create_rollout("sample@3.0.0", group="sim", plan=FAST_PLAN)["id"]
    done = wait_for(lambda: (r := client.get_rollout(rid))["state"] in (
        "completed", "halted") and r, 60, "rollout finished")
    assert done["state"] == "completed", done["last_evaluation"]
    actions = [d["action"] for d in done["decisions"]]
    assert actions == ["created", "advance", "advance", "advance", "complete"]
    assert fleet.active_refs() == {"sample@3.0.0": DEVICES}
    shadow = done["decisions"][1]["data"]["metrics"]
    assert shadow["agreement"] == 1.0 and shadow["samples"] >= 200
    # 200 devices through two rollouts: the embedded broker's per-client bounds never bit
    dropped = server.services.metrics.broker_dropped
    reasons = ("rate_limited", "too_large", "queue_full")
    assert {r: dropped.labels(r)._value.get() for r in reasons} == dict.fromkeys(reasons, 0)
