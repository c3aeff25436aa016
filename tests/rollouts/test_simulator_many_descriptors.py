"""The simulator's one epoll loop connects every device even when the process already holds
more than 1,024 file descriptors (paho's own ``select`` loop cannot watch those)."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from device_agent.simulator import SimFleet
from fleet_server.api_client import FleetClient
from fleet_server.config import ServerSettings
from fleet_server.serve import start_server

from .sim_helpers import publish, wait_for

DEVICES = 200
DUMMY_FDS = 1100


@contextmanager
def descriptors_held(count: int) -> Iterator[list[int]]:
    fds: list[int] = []
    try:
        fds.extend(os.open(os.devnull, os.O_RDONLY) for _ in range(count))
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def test_200_devices_connect_and_install_while_process_holds_1100_descriptors(
        tmp_path: Path, sample_onnx: Path) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < DUMMY_FDS + 3 * DEVICES + 512:
        pytest.skip(f"RLIMIT_NOFILE soft limit {soft} too low for this scenario")
    settings = ServerSettings(data_dir=tmp_path / "fleet", port=0, mqtt_port=0,
                              rollout_tick_s=0.3, insecure=True)
    # the server (whose bridge uses paho's select loop) takes its descriptors first
    with start_server(settings) as server, \
            FleetClient(server.http_url, server.admin_token) as client:
        publish(client, tmp_path, sample_onnx, ["1.0.0"])
        with descriptors_held(DUMMY_FDS) as fds:
            assert max(fds) >= 1024
            fleet = SimFleet(server=server.http_url, admin_token=server.admin_token,
                             count=DEVICES, group="sim", report_interval_s=2.0).start()
            try:
                fleet.wait_connected(60)
                assert sum(d.online for d in fleet.devices) == DEVICES
                client.deploy("sample@1.0.0", group="sim")
                wait_for(lambda: fleet.active_refs()["sample@1.0.0"] == DEVICES, 60,
                         "v1 on every simulated device")
                assert fleet.stats["install_committed"] >= DEVICES
                assert fleet.stats["callback_errors"] == 0
            finally:
                fleet.stop()
            # stop() closed every client socket: the descriptors above ours are gone
            assert all(d._client.socket() is None or d._client.socket().fileno() == -1
                       for d in fleet.devices)
