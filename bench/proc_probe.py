"""Where the CPU goes during a scale benchmark, read from ``/proc`` and the server's probe.

``Sampler`` polls, once every ``period_s`` until stopped: the CPU of each watched process
(server, broker, simulator processes), the CPU of each server thread by name (the thread
map comes from ``bench.server_probe``'s file), and the server's ingest queue depth from its
``/metrics``. ``summary()`` gives the deltas over the sampled window.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

CLK_TCK = os.sysconf("SC_CLK_TCK")
QUEUE_RE = re.compile(r"^edgefleet_telemetry_ingest_queue_depth\s+([0-9.e+]+)$", re.M)


def cpu_s(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of a process (or one of its threads)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu(pid: int, names: dict[str, str]) -> Counter[str]:
    """CPU seconds per thread name (threads missing from ``names`` count as "other")."""
    out: Counter[str] = Counter()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        out[_group(names.get(tid, "other"))] += cpu_s(pid, int(tid))
    return out


def _group(name: str) -> str:
    """Thread names folded into what they do (uvicorn's sync routes run on AnyIO workers)."""
    if name.startswith("AnyIO worker") or name.startswith("ThreadPoolExecutor"):
        return "http routes (worker threads)"
    if name == "MainThread":
        return "http (event loop)"
    return name


def read_probe(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (FileNotFoundError, json.JSONDecodeError):
        return {"threads": {}, "db_s": {}, "db_calls": {}}


class Sampler:
    def __init__(self, *, server_pid: int, probe_file: Path, procs: dict[str, int],
                 metrics_url: str | None = None, token: str | None = None,
                 period_s: float = 1.0) -> None:
        self._server, self._probe = server_pid, probe_file
        self._procs = dict(procs)  # label -> pid (server included under its own label)
        self._metrics_url, self._token = metrics_url, token
        self._period = period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.queue_depths: list[float] = []
        self._names: dict[str, str] = {}
        self._threads0: Counter[str] = Counter()
        self._threads1: Counter[str] = Counter()

    def start(self) -> Sampler:
        self._t0 = time.monotonic()
        self._proc0 = {k: cpu_s(p) for k, p in self._procs.items()}
        probe = read_probe(self._probe)
        self._names = probe["threads"]
        self._db0 = (Counter(probe["db_s"]), Counter(probe["db_calls"]))
        self._threads0 = thread_cpu(self._server, self._names)
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        http = httpx.Client(headers={"Authorization": f"Bearer {self._token}"}, timeout=10)
        try:
            while not self._stop.wait(self._period):
                self._names.update(read_probe(self._probe)["threads"])
                self._threads1 = thread_cpu(self._server, self._names)
                if self._metrics_url:
                    try:
                        m = QUEUE_RE.search(http.get(self._metrics_url).text)
                    except httpx.HTTPError:
                        m = None
                    if m:
                        self.queue_depths.append(float(m.group(1)))
        finally:
            http.close()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        wall = time.monotonic() - self._t0
        procs = {k: cpu_s(p) - self._proc0[k] for k, p in self._procs.items()}
        probe = read_probe(self._probe)
        self._names.update(probe["threads"])
        threads = thread_cpu(self._server, self._names)
        threads.subtract(self._threads0)
        db_s = Counter(probe["db_s"])
        db_s.subtract(self._db0[0])
        db_calls = Counter(probe["db_calls"])
        db_calls.subtract(self._db0[1])
        return {"wall_s": wall, "proc_cpu_s": procs,
                "server_threads_cpu_s": {k: v for k, v in threads.items() if v > 0.05},
                "server_db_s": {k: v for k, v in db_s.items() if v > 0.01},
                "server_db_calls": {k: v for k, v in db_calls.items() if v > 0},
                "queue_depth_max": max(self.queue_depths, default=None),
                "queue_depth_mean": (sum(self.queue_depths) / len(self.queue_depths)
                                     if self.queue_depths else None)}


def component_cpu(own: str = "simulator (bench process)") -> Counter[str]:
    """CPU seconds so far of every process on this host that a replicas benchmark runs, by
    component: each ``fleet-server serve --replica-id NAME``, Mosquitto, PostgreSQL (all its
    backends), and this process (``own``). Processes that ended are not counted, so take
    the difference of two snapshots around a window in which none ends."""
    out: Counter[str] = Counter()
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        label = _component(pid, me, comm, [a.decode(errors="replace") for a in argv], own)
        if label:
            out[label] += cpu_s(pid)
    return out


def _component(pid: int, me: int, comm: str, argv: list[str], own: str) -> str | None:
    if pid == me:
        return own
    if comm == "mosquitto":
        return "mosquitto"
    if comm == "postgres" or comm.startswith("postgres"):
        return "postgresql"
    if "--replica-id" in argv:
        return f"replica {argv[argv.index('--replica-id') + 1]}"
    return None
