"""The server's own MQTT client: it connects and does its work when its socket is numbered
above 1,023 (paho's ``select`` loop could not watch it), and it comes back by itself, with
backoff, after the broker restarts."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from device_agent.simulator import SimFleet
from fleet_server.api_client import FleetClient
from fleet_server.config import ServerSettings
from fleet_server.mqtt_bridge import MqttBridge
from fleet_server.mqtt_loop import Backoff
from fleet_server.serve import RunningServer, start_server
from tests.faults.mqtt_tools import Mosquitto
from tests.rollouts.sim_helpers import publish, wait_for
from tests.rollouts.test_simulator_many_descriptors import descriptors_held

DEVICES = 5
DUMMY_FDS = 1100


def bridge_of(server: RunningServer) -> MqttBridge:
    bridge = server.services.bridge
    assert bridge is not None
    return bridge


def deploy_and_wait(client: FleetClient, fleet: SimFleet, ref: str) -> None:
    client.deploy(ref, group="sim")
    wait_for(lambda: fleet.active_refs()[ref] == DEVICES, 60, f"{ref} on every device")


def test_bridge_works_while_the_process_holds_more_than_1024_descriptors(
        tmp_path: Path, sample_onnx: Path) -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < DUMMY_FDS + 512:
        pytest.skip(f"RLIMIT_NOFILE soft limit {soft} too low for this scenario")
    settings = ServerSettings(data_dir=tmp_path / "fleet", port=0, mqtt_port=0, insecure=True)
    # descriptors first: every socket the server opens is numbered above 1,023
    with descriptors_held(DUMMY_FDS) as fds, start_server(settings) as server, \
            FleetClient(server.http_url, server.admin_token) as client:
        assert max(fds) >= 1024
        bridge = bridge_of(server)
        wait_for(lambda: bridge.connected, 30, "the bridge to connect")
        sock = bridge._client.socket()
        assert sock is not None and sock.fileno() >= 1024
        publish(client, tmp_path, sample_onnx, ["1.0.0"])
        fleet = SimFleet(server=server.http_url, admin_token=server.admin_token,
                         count=DEVICES, group="sim", report_interval_s=0.5).start()
        try:
            fleet.wait_connected(60)
            deploy_and_wait(client, fleet, "sample@1.0.0")  # instructions out, chunks served
            wait_for(lambda: bridge.stats["telemetry"] >= DEVICES, 30, "telemetry stored")
            assert bridge.stats["handler_errors"] == 0
        finally:
            fleet.stop()


def test_bridge_reconnects_after_a_mosquitto_restart_and_keeps_working(
        tmp_path: Path, sample_onnx: Path, broker: Mosquitto) -> None:
    settings = ServerSettings(data_dir=tmp_path / "fleet", port=0, broker_url=broker.url, insecure=True)
    with start_server(settings) as server, \
            FleetClient(server.http_url, server.admin_token) as client:
        bridge = bridge_of(server)
        wait_for(lambda: bridge.connected, 30, "the bridge to connect")
        publish(client, tmp_path, sample_onnx, ["1.0.0", "2.0.0"])
        fleet = SimFleet(server=server.http_url, admin_token=server.admin_token,
                         count=DEVICES, group="sim", report_interval_s=0.5).start()
        try:
            fleet.wait_connected(60)
            deploy_and_wait(client, fleet, "sample@1.0.0")
            losses = bridge._loop.stats["connection_losses"]

            broker.stop()
            wait_for(lambda: not bridge.connected, 30, "the bridge to see the broker go")
            broker.start()
            wait_for(lambda: bridge.connected, 60, "the bridge to reconnect")
            assert bridge._loop.stats["connection_losses"] == losses + 1
            fleet.wait_connected(60)
            deploy_and_wait(client, fleet, "sample@2.0.0")  # works after the restart
        finally:
            fleet.stop()


def test_backoff_waits_are_full_jitter_below_a_doubling_capped_ceiling() -> None:
    backoff = Backoff(base_s=0.5, cap_s=4.0, rng=random.Random(7))
    ceilings, waits = [], []
    for _ in range(8):
        ceilings.append(backoff.ceiling_s())
        waits.append(backoff.next_s())
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert all(0.0 <= w <= c for w, c in zip(waits, ceilings, strict=True))
    assert len(set(waits)) == len(waits)  # jittered, not a fixed schedule
    backoff.reset()
    assert backoff.ceiling_s() == 0.5
    with pytest.raises(ValueError, match="0 < base_s <= cap_s"):
        Backoff(base_s=5.0, cap_s=1.0)
