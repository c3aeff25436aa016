"""Real replicas: ``fleet-server serve`` processes sharing one PostgreSQL, one data
directory and one Mosquitto (TLS, from ``fleet-server mosquitto-config --replica ...``)."""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.db.conftest import postgres_databases as postgres_databases
from tests.db.conftest import postgres_server as postgres_server
from tests.rollouts.sim_helpers import free_port, wait_for
from tests.security.tls_fleet import mosquitto_from_config


@contextmanager
def mosquitto(data: Path, out: Path, replicas: tuple[str, ...]) -> Iterator[int]:
    """Mosquitto configured by ``fleet-server mosquitto-config`` for ``replicas``."""
    with mosquitto_from_config(data, out, replicas, verbose=False) as broker:
        yield broker.port


class Replica:
    """One ``fleet-server serve --replica-id NAME`` process."""

    def __init__(self, name: str, *, data: Path, db_url: str, broker_port: int,
                 log_dir: Path, extra: tuple[str, ...] = ()) -> None:
        self.name, self.data, self.port = name, data, free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        self._args = [sys.executable, "-m", "fleet_server.cli", "serve", "--data", str(data),
                      "--db", db_url, "--broker", f"mqtts://127.0.0.1:{broker_port}",
                      "--port", str(self.port), "--replica-id", name, *extra]
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self._args, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.health() is not None or not self.alive(), 60,
                 f"replica {self.name} to answer")
        assert self.alive(), self.log()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def health(self) -> dict[str, Any] | None:
        ca = self.data / "ca" / "bundle.pem"
        try:
            r = httpx.get(f"{self.url}/api/v1/health", timeout=2,
                          verify=ssl.create_default_context(cafile=str(ca)))
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def kill(self) -> None:
        """SIGKILL: no lease release, no flush, no disconnect."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive() and self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def leader_of(replicas: list[Replica]) -> Replica | None:
    for r in replicas:
        if r.alive() and (h := r.health()) is not None and h["leader"]:
            return r
    return None


def wait_leader(replicas: list[Replica], timeout_s: float = 30) -> Replica:
    found: Replica = wait_for(lambda: leader_of(replicas), timeout_s, "a leader")
    return found
