"""A simulated fleet split over several processes (``SimFleet`` in each), for fleets whose
connections and signed reports are more than one Python process drives.

``FleetProcs`` has the part of ``SimFleet``'s surface the fleet benchmark uses: ``start``,
``wait_connected``, ``stats``, ``active_refs``, ``stop``; plus ``pids`` (their CPU is read
from ``/proc``). Each process enrols ``count / procs`` devices named ``{prefix}{k}-NNNNN``
in the same group, raises its own descriptor limit and runs its own epoll loop.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import resource
from multiprocessing.connection import Connection
from typing import Any


def _child(conn: Connection, kw: dict[str, Any], connect_batch: int,
           batch_timeout_s: float) -> None:
    from device_agent.simulator import SimFleet

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * int(kw["count"]) + 1024
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    fleet = SimFleet(**kw)
    try:
        fleet.start(connect_batch=connect_batch, batch_timeout_s=batch_timeout_s)
        conn.send(("started", None))
        while True:
            cmd = conn.recv()
            if cmd == "stop":
                break
            if cmd == "connected":
                conn.send(("connected", sum(d.online for d in fleet.devices)))
            elif cmd == "stats":
                conn.send(("stats", (dict(fleet.stats),
                                     {str(k): v for k, v in fleet.active_refs().items()})))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which fails the row
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        fleet.stop()
        conn.close()


class FleetProcs:
    def __init__(self, *, procs: int, count: int, prefix: str = "sim",
                 **kw: Any) -> None:
        self.count = count
        ctx = mp.get_context("spawn")
        share = [count // procs + (1 if k < count % procs else 0) for k in range(procs)]
        self._kw = [{**kw, "count": n, "prefix": f"{prefix}{k}"} for k, n in enumerate(share)]
        self._ctx = ctx
        self._procs: list[Any] = []
        self._conns: list[Connection] = []

    @property
    def pids(self) -> list[int]:
        return [int(p.pid) for p in self._procs]

    def start(self, connect_batch: int, batch_timeout_s: float) -> FleetProcs:
        for kw in self._kw:
            parent, child = self._ctx.Pipe()
            proc = self._ctx.Process(target=_child, args=(child, kw, connect_batch,
                                                          batch_timeout_s), daemon=True)
            proc.start()
            self._procs.append(proc)
            self._conns.append(parent)
        for conn in self._conns:
            kind, detail = conn.recv()
            if kind != "started":
                raise RuntimeError(f"a simulator process failed: {detail}")
        return self

    def _ask(self, cmd: str) -> list[Any]:
        out = []
        for conn in self._conns:
            conn.send(cmd)
            kind, value = conn.recv()
            if kind == "error":
                raise RuntimeError(f"a simulator process failed: {value}")
            out.append(value)
        return out

    def online(self) -> int:
        return sum(self._ask("connected"))

    def wait_connected(self, timeout_s: float) -> None:
        import time

        deadline = time.monotonic() + timeout_s
        while (online := self.online()) < self.count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {online}/{self.count} devices connected")
            time.sleep(0.5)

    @property
    def stats(self) -> collections.Counter[str]:
        total: collections.Counter[str] = collections.Counter()
        for stats, _ in self._ask("stats"):
            total.update(stats)
        return total

    def active_refs(self) -> collections.Counter[str]:
        total: collections.Counter[str] = collections.Counter()
        for _, refs in self._ask("stats"):
            total.update(refs)
        return total

    def stop(self) -> None:
        for conn in self._conns:
            try:
                conn.send("stop")
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
