"""Running under systemd: the unit ``device-agent install --systemd`` writes passes
``systemd-analyze verify``, and a real ``device-agent run`` process tells a notify socket
READY=1 once serving, then WATCHDOG=1 while healthy."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from device_agent.agent import Agent
from device_agent.errors import AgentError
from device_agent.systemd import notify, unit_text, watchdog_interval

from .agent_dirs import served_agent_dir

HARDENING = ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
             "Restart=on-failure", "Type=notify", "User=edgefleet", "Group=edgefleet")


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return path


def test_generated_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    agent_dir = tmp_path / "agent dir 100%"  # a space and a specifier character
    agent_dir.mkdir()
    unit = tmp_path / "units" / "edgefleet-agent.service"
    unit.parent.mkdir()
    unit.write_text(unit_text(agent_dir, sys.executable))
    proc = subprocess.run([systemd_analyze(), "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60)
    # In a container verify may also complain about the host (no /run/systemd, other
    # units); any line that names our unit is a finding about it and fails the test.
    ours = [line for line in proc.stderr.splitlines() if unit.name in line or str(unit) in line]
    assert proc.returncode == 0, proc.stderr
    assert ours == []
    text = unit.read_text()
    for line in HARDENING:
        assert line in text.splitlines()
    rw = [line for line in text.splitlines() if line.startswith("ReadWritePaths=")]
    assert rw == [f'ReadWritePaths="{str(agent_dir.resolve()).replace("%", "%%")}"']
    assert any(line.startswith("WatchdogSec=") for line in text.splitlines())


def test_verify_catches_a_broken_unit_so_the_check_above_means_something(
    tmp_path: Path,
) -> None:
    unit = tmp_path / "edgefleet-agent.service"
    unit.write_text(unit_text(tmp_path, tmp_path / "no-such-python"))
    proc = subprocess.run([systemd_analyze(), "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "no-such-python" in proc.stderr


def test_unit_for_a_path_with_a_quote_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(AgentError, match="cannot write a systemd unit.*'\"'"):
        unit_text(tmp_path / 'a"b', sys.executable)


def test_agent_dir_under_home_keeps_home_read_only_instead_of_hidden() -> None:
    text = unit_text(Path("/home/pi/edgefleet"), "/opt/edgefleet/bin/python")
    assert "ProtectHome=read-only" in text.splitlines()
    assert "ProtectHome=yes" in unit_text(Path("/var/lib/edgefleet"), "/usr/bin/python3")


def _bind_dgram(address: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(address)
    s.settimeout(60)
    return s


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"edgefleet-test-{uuid.uuid4().hex}"
    with _bind_dgram("\0" + name) as s:
        assert notify("READY=1", env={"NOTIFY_SOCKET": "@" + name})
        assert s.recv(4096) == b"READY=1"


def test_notify_without_notify_socket_does_nothing_and_says_so() -> None:
    assert notify("READY=1", env={}) is False
    assert notify("READY=1", env={"NOTIFY_SOCKET": "relative/path"}) is False


def test_watchdog_is_off_for_another_pid_or_without_a_period() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000",
                              "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_agent_process_sends_ready_then_watchdog_while_healthy(
    tmp_path: Path, sample_onnx: Path,
) -> None:
    agent_dir = served_agent_dir(tmp_path / "agent", sample_onnx)
    sock_path = str(tmp_path / "notify.sock")
    with _bind_dgram(sock_path) as s:
        env = {**os.environ, "NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000"}
        env.pop("WATCHDOG_PID", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "device_agent", "run", "--dir", str(agent_dir),
             "--api-port", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            first = s.recv(4096).decode()
            second = s.recv(4096).decode()
            third = s.recv(4096).decode()
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        stopping = s.recv(4096).decode()
    assert first.splitlines()[0] == "READY=1", first
    assert "STATUS=serving on http://127.0.0.1:" in first
    assert second == third == "WATCHDOG=1"
    assert stopping == "STOPPING=1"
    assert proc.returncode == 0, out.decode(errors="replace")


def test_agent_is_unhealthy_once_its_local_api_stops_answering(
    tmp_path: Path, sample_onnx: Path,
) -> None:
    agent = Agent(served_agent_dir(tmp_path / "agent", sample_onnx), api_port=0)
    assert agent.healthy() is False  # not started: no ticker, no API
    agent.start()
    try:
        assert agent.healthy() is True
        agent.api.stop()
        assert agent.healthy() is False
    finally:
        agent.stop()
