"""A real ``device-agent run`` process serving a given model slot, for benches and tests.

``agent_dir_serving`` lays out an agent directory (config, the slot as slot ``a``, the
``current.json`` pointer) as the installer leaves it after a commit; ``AgentProcess``
starts ``python -m device_agent run`` on it (no broker reachable: the MQTT link keeps
retrying while the local API serves the model) and reads the process's ``/proc`` figures.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.config import AgentConfig
from device_agent.slots import SlotPointer, Slots
from model_bundles import keys

__all__ = ["AgentProcess", "agent_dir_serving"]


def agent_dir_serving(agent_dir: Path, slot_dir: Path, **config: Any) -> Path:
    """An agent directory whose committed model is a copy of ``slot_dir``."""
    manifest = json.loads((slot_dir / "manifest.json").read_text())
    AgentConfig(device_id="bench-device", server_url="http://fleet.invalid",
                mqtt_url="mqtt://127.0.0.1:1", mqtt_username="bench-device",
                mqtt_password="x", preferred_delegates=("cpu",),
                fleet_public_key=keys.public_key_pem(Ed25519PrivateKey.generate().public_key()),
                **config).save(agent_dir)
    slots = Slots(agent_dir)
    shutil.copytree(slot_dir, slots.path("a"))
    sha = hashlib.sha256((slot_dir / "manifest.json").read_bytes()).hexdigest()
    slots.switch(SlotPointer("a", sha, manifest["name"], manifest["version"]))
    return agent_dir


class AgentProcess:
    """``python -m device_agent run --dir DIR --api-port 0``; a context manager whose
    ``url`` is the local API once the committed model is served."""

    def __init__(self, agent_dir: Path, *, timeout: float = 60.0) -> None:
        self.dir = Path(agent_dir)
        self.log = self.dir / "agent.log"
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> AgentProcess:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "device_agent", "run", "--dir", str(self.dir),
                 "--api-port", "0"], stdout=out, stderr=subprocess.STDOUT)
        try:
            api = self.dir / "state" / "api.json"
            self.url = self._wait(lambda: json.loads(api.read_text())["url"], "api.json")
            self._wait(lambda: httpx.get(f"{self.url}/v1/health").json()["model"],
                       "the model served")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait(self, probe: Any, what: str) -> Any:
        end = time.monotonic() + self.timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited ({self.proc.returncode}): "
                                   + self.log.read_text()[-2000:])
            try:
                value = probe()
            except (OSError, ValueError, KeyError, httpx.HTTPError):
                value = None
            if value:
                return value
            if time.monotonic() > end:
                raise RuntimeError(f"timed out waiting for {what}: "
                                   + self.log.read_text()[-2000:])
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self) -> int:
        return proc_status(self.pid, "VmRSS")

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def proc_status(pid: int, key: str) -> int:
    """A field of ``/proc/<pid>/status`` (VmRSS in KiB, Threads a count)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (``/proc/<pid>/stat`` fields 14-15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
