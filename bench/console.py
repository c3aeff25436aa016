"""Server-side render time of the console on 10,000 devices (``python -m bench.console``).

Starts a real ``fleet-server serve`` process on a fresh data directory, seeds the same
10,000-device fleet the console tests use (tests/console/fleet_seed.py: telemetry windows,
troubles, drift), logs in with the admin token and then times, in interleaved rounds,
GET /api/v1/health (the baseline: the cheapest route of the same server), the overview
(/console/), the devices page (50 rows, and two filtered/sorted variants) and
GET /api/v1/devices?per_page=50. Each request's wall time is measured by the client over a
keep-alive connection, so it includes HTTP and the template render. Prints p50/p95 per
route and the p50 ratio to the baseline. Target: each console page <= 200 ms p50 on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from fleet_server.datadir import ADMIN_TOKEN, REGISTRY
from tests.console.fleet_seed import N_DEVICES, seed

ROUTES = (
    ("health (baseline)", "/api/v1/health"),
    ("overview", "/console/"),
    ("devices page 1", "/console/devices"),
    ("devices sort=latency", "/console/devices?sort=latency"),
    ("devices trouble+status+page 3", "/console/devices?trouble=any&status=offline&page=3"),
    ("API devices per_page=50", "/api/v1/devices?per_page=50"),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"fleet-server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/api/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("fleet-server did not come up")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40, help="requests per route (interleaved)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "fleet"
        port, mqtt = _free_port(), _free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleet_server.cli", "serve", "--data", str(data),
             "--port", str(port), "--mqtt-port", str(mqtt),
             "--insecure"],  # plain HTTP: render cost only, comparable with earlier runs
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_up(url, proc)
            t0 = time.perf_counter()
            seed(data / REGISTRY, time.time())
            seeded = time.perf_counter() - t0
            token = (data / ADMIN_TOKEN).read_text().strip()
            times: dict[str, list[float]] = {name: [] for name, _ in ROUTES}
            with httpx.Client(base_url=url, timeout=30) as web:
                web.post("/console/login", data={"token": token})
                web.headers["Authorization"] = f"Bearer {token}"
                for _, path in ROUTES:  # warm up each route once; each is the real page
                    r = web.get(path)
                    assert r.status_code == 200, path
                    assert "devices" not in path or "dev-0" in r.text, path
                for _ in range(args.rounds):
                    for name, path in ROUTES:
                        start = time.perf_counter()
                        r = web.get(path)
                        times[name].append((time.perf_counter() - start) * 1000)
                        assert r.status_code == 200, (path, r.status_code)
        finally:
            proc.terminate()
            proc.wait(15)
    base = statistics.median(times[ROUTES[0][0]])
    print(f"{N_DEVICES} devices seeded in {seeded:.1f} s; {args.rounds} requests per route, "
          f"interleaved; {os.cpu_count()} CPUs")
    print(f"{'route':34} {'p50 ms':>8} {'p95 ms':>8} {'p50 / baseline':>15}")
    for name, _ in ROUTES:
        p50 = statistics.median(times[name])
        print(f"{name:34} {p50:8.1f} {_pct(times[name], 0.95):8.1f} {p50 / base:15.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
