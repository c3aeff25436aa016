"""Progress of long CLI operations: shown on a terminal (stderr a pseudo-terminal), never
when stderr is a pipe or with ``--json``, where stdout stays exactly the parseable result.

Each command runs as a real process: ``model-bundle build``, ``quantize`` and ``publish``
(against a real fleet server), and ``fleet-server demo``."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_server.api_client import FleetClient
from fleet_server.config import ServerSettings
from fleet_server.serve import RunningServer, start_server
from model_bundles.keys import generate_keypair
from tests.e2e.harness import script

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_piped(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """stdout and stderr both pipes: no terminal anywhere."""
    return subprocess.run([script(args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=180, env={**os.environ, **(env or {})})


def run_on_pty(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """stderr on a pseudo-terminal (what a user at a terminal sees), stdout a pipe."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([script(args[0]), *args[1:]], stdout=subprocess.PIPE,
                            stderr=follower, stdin=subprocess.DEVNULL,
                            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120",
                                 **(env or {})})
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    out = proc.stdout.read().decode() if proc.stdout else ""
    proc.wait(30)
    if proc.stdout:
        proc.stdout.close()
    return proc.returncode, out, ANSI.sub("", b"".join(chunks).decode(errors="replace"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys"))


def build_args(sample_onnx: Path, key: Path, out: Path, *extra: str) -> list[str]:
    return ["model-bundle", "build", str(sample_onnx), "--name", "sample", "--version",
            "1.0.0", "--key", str(key), "--out", str(out), "--task", "classifier", *extra]


def test_build_without_a_terminal_prints_only_its_result_line(
    tmp_path: Path, sample_onnx: Path, keys: tuple[Path, Path],
) -> None:
    out = tmp_path / "b.efb"
    proc = run_piped(*build_args(sample_onnx, keys[0], out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert re.fullmatch(r"built \S+: sample@1\.0\.0 \(\d+ files, .+\) signed by \w{16}\n",
                        proc.stdout)
    assert out.is_file()


def test_build_json_is_parseable_and_quiet(
    tmp_path: Path, sample_onnx: Path, keys: tuple[Path, Path],
) -> None:
    out = tmp_path / "b.efb"
    proc = run_piped(*build_args(sample_onnx, keys[0], out, "--json"))
    assert proc.returncode == 0 and proc.stderr == ""
    doc = json.loads(proc.stdout)
    assert doc["ref"] == "sample@1.0.0" and doc["bytes"] == out.stat().st_size
    assert doc["variants"] == ["onnx-fp32"]


def test_build_on_a_terminal_shows_each_step(
    tmp_path: Path, sample_onnx: Path, keys: tuple[Path, Path],
) -> None:
    code, stdout, terminal = run_on_pty(*build_args(sample_onnx, keys[0], tmp_path / "b.efb"))
    assert code == 0, terminal
    assert stdout.startswith("built ")  # the result still goes to stdout
    for step in ("reading 1 model file", "running the reference model for the golden outputs",
                 "hashing model.onnx", "writing and signing b.efb"):
        assert f"✓ {step} (" in terminal, terminal


def test_build_json_on_a_terminal_shows_no_progress(
    tmp_path: Path, sample_onnx: Path, keys: tuple[Path, Path],
) -> None:
    code, stdout, terminal = run_on_pty(*build_args(sample_onnx, keys[0], tmp_path / "b.efb",
                                                    "--json"))
    assert code == 0 and terminal == ""
    assert json.loads(stdout)["ref"] == "sample@1.0.0"


def test_quantize_without_a_terminal_and_with_json_is_parseable_and_quiet(
    tmp_path: Path, sample_onnx: Path,
) -> None:
    out = tmp_path / "q.onnx"
    proc = run_piped("model-bundle", "quantize", str(sample_onnx), "--out", str(out),
                     "--json", "--force")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    doc = json.loads(proc.stdout)
    assert doc["out"] == str(out) and doc["mode"] == "dynamic" and out.is_file()
    assert doc["int8_bytes"] == out.stat().st_size


def test_quantize_on_a_terminal_shows_each_step(tmp_path: Path, sample_onnx: Path) -> None:
    code, stdout, terminal = run_on_pty("model-bundle", "quantize", str(sample_onnx), "--out",
                                        str(tmp_path / "q.onnx"), "--force")
    assert code == 0, terminal
    assert stdout.startswith("wrote ")
    for step in ("loading the evaluation inputs", "quantising (dynamic)",
                 "comparing with the float model on 64 samples"):
        assert f"✓ {step} (" in terminal, terminal


@pytest.fixture
def fleet(tmp_path: Path, keys: tuple[Path, Path]) -> Iterator[RunningServer]:
    server = start_server(ServerSettings(data_dir=tmp_path / "server", port=0, mqtt_port=0, insecure=True))
    try:
        with FleetClient(server.http_url, server.admin_token) as client:
            client.add_publisher(keys[1].read_text(), name="tests")
        yield server
    finally:
        server.stop()


def test_publish_without_a_terminal_prints_id_and_ref_only(
    tmp_path: Path, sample_onnx: Path, keys: tuple[Path, Path], fleet: RunningServer,
) -> None:
    bundle = tmp_path / "b.efb"
    assert run_piped(*build_args(sample_onnx, keys[0], bundle)).returncode == 0
    env = {"EDGEFLEET_SERVER": fleet.http_url, "EDGEFLEET_TOKEN": fleet.admin_token}
    proc = run_piped("model-bundle", "publish", str(bundle), env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert re.fullmatch(r"[0-9a-f]{64} sample@1\.0\.0\n", proc.stdout)
    again = run_piped("model-bundle", "publish", str(bundle), "--json", env=env)
    assert again.stderr == "" and json.loads(again.stdout)["ref"] == "sample@1.0.0"


def test_publish_on_a_terminal_shows_the_upload(
    tmp_path: Path, sample_onnx: Path, keys: tuple[Path, Path], fleet: RunningServer,
) -> None:
    bundle = tmp_path / "b.efb"
    assert run_piped(*build_args(sample_onnx, keys[0], bundle)).returncode == 0
    code, stdout, terminal = run_on_pty(
        "model-bundle", "publish", str(bundle),
        env={"EDGEFLEET_SERVER": fleet.http_url, "EDGEFLEET_TOKEN": fleet.admin_token})
    assert code == 0, terminal
    assert re.fullmatch(r"[0-9a-f]{64} sample@1\.0\.0\n", stdout)
    assert "uploading b.efb" in terminal and "100%" not in stdout
    size_kb = bundle.stat().st_size / 1000
    assert re.search(rf"{size_kb:.1f}/{size_kb:.1f} kB", terminal), terminal


@pytest.mark.e2e
def test_demo_start_up_on_a_terminal_shows_its_steps(tmp_path: Path) -> None:
    code, stdout, terminal = run_on_pty(
        "fleet-server", "demo", "--data", str(tmp_path / "demo"), "--port", "0",
        "--api-port", "0", "--exit-when-ready")
    assert code == 0, terminal
    assert "edgefleet demo is running" in stdout
    for step in ("building the sample bundle", "starting the fleet server and its MQTT broker",
                 "publishing the bundle", "enrolling and starting the device agent"):
        assert f"✓ {step} (" in terminal, terminal


def test_progress_is_off_for_a_pipe_and_for_json() -> None:
    from model_bundles.progress import wanted

    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as tty:
            assert wanted(stream=tty) is True
            assert wanted(json_mode=True, stream=tty) is False
    finally:
        os.close(leader)
        os.close(follower)
    r, w = os.pipe()
    with os.fdopen(w, "w") as pipe:
        assert wanted(stream=pipe) is False
    os.close(r)


def test_device_agent_interrupted_during_install_exits_130_with_one_line_and_no_config(
    tmp_path: Path,
) -> None:
    """README's exit-status table: 130 for Ctrl-C, one line on stderr, nothing enrolled."""
    import signal
    import socket

    with socket.socket() as server:  # a fleet server that accepts and never answers
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        proc = subprocess.Popen(
            [script("device-agent"), "install", "--server",
             f"http://127.0.0.1:{server.getsockname()[1]}", "--token", "efe_t.sha256:" + "0" * 64, "--device-id",
             "dev-1", "--dir", str(tmp_path / "agent")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        conn, _ = server.accept()  # the first request (the CA fetch) is under way
        with conn:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err == "device-agent: interrupted\n" and out == ""
    assert not (tmp_path / "agent" / "config.json").exists()
