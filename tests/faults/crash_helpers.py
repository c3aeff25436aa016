"""Shared by the crash-safety test and ``bench/crash.py``: a multi-chunk model, the fleet
set-up, and the checks of what a killed agent left on disk."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from device_agent.runtime import load_slot_manifest
from device_agent.slots import Slots
from device_agent.state_store import StateStore
from model_bundles import keys as mb_keys
from model_bundles import verify as mb_verify
from ota.install import TERMINAL
from tests.e2e.harness import Fleet, Process, read_json, run_cli, wait_for

WIDTH = 24_000  # 16 x 24000 float32 weights: a ~1.5 MB bundle, six 256 KiB chunks


def wide_model(path: Path) -> Path:
    w = np.random.default_rng(1).standard_normal((16, WIDTH)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["scores"])], "wide",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", WIDTH])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


class CrashRig:
    """A fleet server, N published versions of one bundle, one enrolled device."""

    def __init__(self, root: Path, versions: int = 2, broker: str | None = None,
                 device_id: str = "crash-1") -> None:
        self.root = root
        self.fleet = Fleet(root, broker)
        model = wide_model(root / "wide.onnx")
        keys = root / "keys"
        run_cli("model-bundle", "keygen", "--out", str(keys))
        self.fleet.cli("fleet-server", "publishers", "add", str(keys / "publisher.pub"))
        pub = mb_keys.load_public_key(keys / "publisher.pub")
        self.trusted = {mb_keys.key_id(pub): pub}
        self.manifests: dict[str, bytes] = {}  # bundle sha256 -> signed manifest bytes
        self.versions = [f"{i + 1}.0.0" for i in range(versions)]
        for v in self.versions:
            out = root / f"wide-{v}.efb"
            run_cli("model-bundle", "build", str(model), "--name", "wide", "--version", v,
                    "--key", str(keys / "publisher.key"), "--out", str(out), "--dim", "batch=2")
            self.fleet.cli("model-bundle", "publish", str(out))
            vb = mb_verify.verify_bundle(out, self.trusted)
            from ota.chunks import file_sha256
            self.manifests[file_sha256(out)] = bytes(vb.manifest_bytes)
        token = json.loads(self.fleet.cli("fleet-server", "enrol-token", "--json").stdout)["token"]
        self.device_id = device_id
        self.dir = root / "agent"
        run_cli("device-agent", "install", "--server", self.fleet.url, "--token", token,
                "--device-id", device_id, "--dir", str(self.dir))
        self.headers = {"Authorization": f"Bearer {self.fleet.token}"}
        self.agent: Process | None = None
        self.runs = 0
        self.deployed = 0

    def deploy(self, version: str) -> None:
        r = httpx.post(f"{self.fleet.url}/api/v1/deployments", headers=self.headers,
                       json={"bundle": f"wide@{version}", "device_id": self.device_id}, timeout=30)
        assert r.status_code == 201, r.text
        self.deployed += 1

    def start(self, env: dict[str, str] | None = None) -> Process:
        (self.dir / "state" / "api.json").unlink(missing_ok=True)
        self.runs += 1
        self.agent = Process(["device-agent", "run", "--dir", str(self.dir), "--api-port", "0",
                              "--telemetry-interval", "5"],
                             self.root / f"agent-run-{self.runs}.log", env=env)
        return self.agent

    def kill(self) -> None:
        if self.agent is not None:
            self.agent.stop(signal.SIGKILL)

    def journal_terminal(self) -> bool:
        return StateStore(self.dir).load_journal().state in TERMINAL

    # -- the invariants -------------------------------------------------------------------

    def check_disk(self) -> str | None:
        """What the next start will serve: None or a bundle whose slot files match a signed,
        published manifest byte for byte (never a partial slot)."""
        cur = Slots(self.dir).current()
        if cur is None:
            return None
        slot = Slots(self.dir).path(cur.slot)
        assert cur.sha256 in self.manifests, f"current.json names unknown bundle {cur.sha256}"
        assert (slot / "manifest.json").read_bytes() == self.manifests[cur.sha256]
        load_slot_manifest(slot)  # every file present with its signed hash
        return cur.bundle

    def converged(self) -> dict[str, Any] | None:
        """The agent serves what current.json names, its journal is terminal, and the
        server shows that same model and install state."""
        api = read_json(self.dir / "state" / "api.json")
        if not api or not self.journal_terminal():
            return None
        served = httpx.get(f"http://127.0.0.1:{api['port']}/v1/health", timeout=5).json()["model"]
        cur = Slots(self.dir).current()
        if served != (cur.bundle if cur else None):
            return None
        j = StateStore(self.dir).load_journal()
        dev = httpx.get(f"{self.fleet.url}/api/v1/devices/{self.device_id}",
                        headers=self.headers, timeout=5).json()
        state = (dev.get("state") or {}).get("install") or {}
        if dev.get("active_bundle") != served or state.get("state") != j.state.value:
            return None
        return {"served": served, "state": j.state.value}

    def restart_until_converged(self, restarts: int = 3, timeout: float = 30) -> int:
        """Restart normally; returns how many restarts it took to converge (<= restarts)."""
        for n in range(1, restarts + 1):
            agent = self.start()
            try:
                wait_for(self.converged, timeout, "convergence", (self.fleet.server, agent))
                return n
            except AssertionError:
                if n == restarts:
                    raise
                self.kill()
        return restarts

    def random_kills(self, count: int, rng: random.Random, max_delay: float = 1.8) -> list[str]:
        """Start, SIGKILL after a random delay, check the disk; a new deployment whenever the
        previous one finished. Returns what each kill left to serve."""
        seen = []
        for _ in range(count):
            if self.journal_terminal():
                self.deploy(self.versions[self.deployed % len(self.versions)])
            self.start()
            time.sleep(rng.uniform(0.3, max_delay))
            self.kill()
            seen.append(f"{StateStore(self.dir).load_journal().state.value}:{self.check_disk()}")
        return seen

    def stop(self) -> None:
        self.kill()
        self.fleet.stop()


def cancelled_and_applied(device_dir: Path, seq: int) -> bool:
    """The install failed as cancelled and instruction ``seq`` is applied. They are two
    writes of the device record (ota.updater.core: an instruction is applied once its
    outcome is on record), so a test waits for both, never for the first alone."""
    store = StateStore(device_dir)
    j = store.load_journal()
    return (j.state.value == "failed" and "cancelled" in (j.error or "")
            and store.applied_seq == seq)
