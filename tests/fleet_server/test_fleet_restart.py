"""Restarting ``fleet-server serve --port 0 --mqtt-port 0``: the ports of the last start are
reused when free, so an enrolled agent (its config holds the broker URL) reconnects."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from tests.e2e.harness import Fleet, Process, read_json, wait_for


def _rewritten_ports(fleet: Fleet, old_inode: int) -> dict[str, Any]:
    """``ports.json`` once the restarted server has replaced it (written atomically)."""
    path = fleet.data / "ports.json"
    wait_for(lambda: path.stat().st_ino != old_inode, 60, "ports.json after restart",
             (fleet.server,))
    ports: dict[str, Any] = read_json(path)
    return ports


def test_agent_reconnects_after_server_restart_on_free_ports(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    try:
        agent, _, _ = fleet.start_agent("dev-1")
        wait_for(lambda: (d := fleet.device("dev-1")) and d["last_seen"], 60,
                 "dev-1 reports", fleet.procs())
        before = read_json(fleet.data / "ports.json")

        before_inode = (fleet.data / "ports.json").stat().st_ino
        fleet.server.stop()
        restarted_at = time.time()
        fleet.server = Process(fleet.server.args, tmp_path / "server-restarted.log")
        after = _rewritten_ports(fleet, before_inode)
        assert (after["http_port"], after["mqtt_port"]) == (
            before["http_port"], before["mqtt_port"])
        assert after["mqtt_url"] == before["mqtt_url"]

        # The running agent (not restarted) reconnects on its own and reports again.
        seen = wait_for(lambda: (d := fleet.device("dev-1")) and d["online"]
                        and (d["last_seen"] or 0) > restarted_at and d, 90,
                        "dev-1 reports to the restarted server", fleet.procs())
        assert agent.alive() and seen["id"] == "dev-1"
    finally:
        fleet.stop()


def test_restart_takes_a_free_port_when_the_recorded_one_is_busy(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    try:
        before = read_json(fleet.data / "ports.json")
        before_inode = (fleet.data / "ports.json").stat().st_ino
        fleet.server.stop()
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", before["mqtt_port"]))
            squatter.listen(1)
            fleet.server = Process(fleet.server.args, tmp_path / "server-restarted.log")
            after = _rewritten_ports(fleet, before_inode)
            assert after["mqtt_port"] != before["mqtt_port"]
            assert after["http_port"] == before["http_port"]
    finally:
        fleet.stop()
