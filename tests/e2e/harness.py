"""Real processes for end-to-end tests: the three console scripts, run as a user would."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def script(name: str) -> str:
    """Path of an installed console script (same environment as the tests)."""
    path = BIN / name
    return str(path) if path.exists() else name


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run one console script to completion and return its result."""
    proc = subprocess.run(
        [script(args[0]), *args[1:]],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


class Process:
    """A long-running console script with its output captured to a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log = log
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [script(args[0]), *args[1:]],
            stdout=self._fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._fh.close()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             procs: tuple[Process, ...] = (), interval: float = 0.1) -> Any:
    """Poll until ``predicate`` returns something truthy; fail with the processes' logs."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported below if it never succeeds
            last_exc = exc
        for p in procs:
            if not p.alive():
                raise AssertionError(f"{p.args[0]} exited early while waiting for {what}:\n{p.output()}")
        time.sleep(interval)
    logs = "\n".join(f"--- {p.args[0]} log ---\n{p.output()[-4000:]}" for p in procs)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})\n{logs}")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


class Fleet:
    """A fleet server process plus the agents started against it, driven through the CLIs.

    The tests built on it talk plain HTTP to the server, so it runs with ``--insecure``
    unless ``insecure=False``: then TLS on every link (the server's default), the CLIs
    verifying the server with ``EDGEFLEET_CA`` and the agents with the CA they pinned at
    enrolment (tests/e2e/test_end_to_end.py, the TLS deploy)."""

    def __init__(self, root: Path, broker: str | None = None,
                 serve_args: tuple[str, ...] = (), insecure: bool = True) -> None:
        self.root = root
        self.data = root / "server"
        self.insecure = insecure or bool(broker and broker.startswith("mqtt://"))
        args = ["fleet-server", "serve", "--data", str(self.data), "--port", "0", "--mqtt-port", "0",
                *serve_args]
        if self.insecure and "--insecure" not in serve_args:
            args.append("--insecure")
        if broker:
            args += ["--broker", broker]
        self.server = Process(args, root / "server.log")
        self.agents: list[Process] = []
        self.ports = wait_for(lambda: read_json(self.data / "ports.json"), 60, "server ports.json",
                              (self.server,))
        self.token = (self.data / "admin.token").read_text().strip()
        self.env = {"EDGEFLEET_SERVER": self.ports["http_url"], "EDGEFLEET_TOKEN": self.token}
        if not self.insecure:
            self.env["EDGEFLEET_CA"] = str(self.ca_bundle)

    @property
    def ca_bundle(self) -> Path:
        """The fleet CA bundle clients pin (``DATA/ca/bundle.pem``)."""
        return self.data / "ca" / "bundle.pem"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """httpx ``verify=`` for this server: its fleet CA (True when plain HTTP)."""
        return True if self.insecure else ssl.create_default_context(cafile=str(self.ca_bundle))

    @property
    def url(self) -> str:
        return str(self.ports["http_url"])

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=self.env, check=check)

    def build_bundle(self, model: Path, name: str, version: str) -> tuple[Path, Path]:
        """keygen + build; returns (bundle, publisher.pub)."""
        keys = self.root / f"keys-{name}"
        if not (keys / "publisher.key").exists():
            run_cli("model-bundle", "keygen", "--out", str(keys))
        bundle = self.root / f"{name}-{version}.efb"
        run_cli("model-bundle", "build", str(model), "--name", name, "--version", version,
                "--key", str(keys / "publisher.key"), "--out", str(bundle))
        return bundle, keys / "publisher.pub"

    def start_agent(self, device_id: str, group: str | None = None,
                    config: dict[str, Any] | None = None) -> tuple[Process, Path, dict[str, Any]]:
        """Enrol a device with a fresh token and run its agent; returns (process, dir, api.json).
        ``config`` overrides keys of the agent's config.json before it starts."""
        args = ["enrol-token", "--json"] + (["--group", group] if group else [])
        token = json.loads(self.cli("fleet-server", *args).stdout)["token"]
        agent_dir = self.root / f"agent-{device_id}"
        run_cli("device-agent", "install", "--server", self.url, "--token", token,
                "--device-id", device_id, "--dir", str(agent_dir))
        if config:
            path = agent_dir / "config.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
        agent = Process(["device-agent", "run", "--dir", str(agent_dir), "--api-port", "0",
                         "--telemetry-interval", "1"], self.root / f"agent-{device_id}.log")
        self.agents.append(agent)
        api = wait_for(lambda: read_json(agent_dir / "state" / "api.json"), 60, "agent api.json",
                       (self.server, agent))
        return agent, agent_dir, api

    def device(self, device_id: str) -> dict[str, Any] | None:
        out = self.cli("fleet-server", "devices", "--json").stdout
        return next((d for d in json.loads(out) if d["id"] == device_id), None)

    def wait_active(self, device_id: str, ref: str, timeout: float = 90) -> dict[str, Any]:
        return wait_for(
            lambda: (d := self.device(device_id)) and d.get("active_bundle") == ref and d,
            timeout, f"{device_id} reports {ref} active", (self.server, *self.agents),
        )

    def procs(self) -> tuple[Process, ...]:
        return (self.server, *self.agents)

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        self.server.stop()
