"""Fleet simulator benchmark: a good rollout to 100% at 200 and 1,000 simulated devices.

Runs ``fleet-server serve`` as its own process (so its CPU is measured alone) against the
embedded amqtt broker or a Mosquitto this command starts itself, enrols N simulated devices
(real paho MQTT clients in this process, connected in batches), puts v1 everywhere, then
times a gated rollout of v2 (shadow 5% -> 5% -> 25% -> 100%) and reports the server's CPU,
the broker's CPU (Mosquitto) and the telemetry reports per second the server stored.

    python -m bench.fleet_sim --devices 200 1000 --broker mosquitto

With ``--broker mosquitto`` a baseline row of ``--baseline`` devices (default 200) on the
embedded broker is run first, in the same run. See docs/rollouts.md for measured figures.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.proc_probe import Sampler, cpu_s  # noqa: E402
from bench.sim_procs import FleetProcs  # noqa: E402
from device_agent.simulator import SimFleet  # noqa: E402
from fleet_server.api_client import FleetClient  # noqa: E402
from model_bundles.samples import write_sample_model  # noqa: E402
from tests.rollouts.sim_helpers import FAST_PLAN, free_port, publish  # noqa: E402

MODES = {"before": "before", "batched": "batched ingest, polling driver",
         "after": "after"}
"""Server variants (``BENCH_SERVER``, bench/server_probe.py)."""

MOSQUITTO_CONF = """listener {port} 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
max_connections -1
"""


def plan_for(n: int) -> dict[str, Any]:
    """The test plan (shadow 5% -> 5% -> 25% -> 100%) with device minimums scaled to ``n``:
    half the 5% cohort, 80% of the 25% cohort, 75% of the fleet."""
    five = max(1, math.ceil(n * 0.05) // 2)
    mins = [five, five, max(1, int(math.ceil(n * 0.25) * 0.8)), max(1, int(n * 0.75))]
    stages = [{**s, "deadline_s": 600, "gates": {**s["gates"], "min_devices": m}}
              for s, m in zip(FAST_PLAN["stages"], mins, strict=True)]
    return {"stages": stages}


def wait_for(check: Callable[[], Any], timeout: float, what: str,
             period: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(period)
    return value


def stored_total(url: str, token: str) -> float:
    """Device messages the server has stored (``/metrics``, every kind)."""
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"},
                     timeout=60).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("edgefleet_telemetry_messages_stored_total{"))


def stage_timeline(rollout: dict[str, Any], t0_wall: float) -> list[tuple[str, float]]:
    """(stage, seconds it took) from the rollout's decisions: each stage from the decision
    that started it (created, or the previous stage's advance) to its own advance."""
    out, last = [], t0_wall
    for d in rollout.get("decisions") or []:
        if d["action"] in ("advance", "complete", "halt"):
            out.append((str(d["stage"]), float(d["ts"]) - last))
            last = float(d["ts"])
    return out


@contextmanager
def mosquitto(tmp: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A private Mosquitto: no persistence, no cap on queued messages or connections."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(MOSQUITTO_CONF.format(port=port))
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=(tmp / "mosquitto.log").open("wb"))
    try:
        import socket

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return True
            except OSError:
                return False

        wait_for(listening, 10, "mosquitto listening")
        yield f"mqtt://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        proc.wait(10)


def telemetry_rows(data: Path) -> int:
    db = sqlite3.connect(f"file:{data / 'registry.db'}?mode=ro", uri=True, timeout=30)
    try:
        return int(db.execute("select count(*) from telemetry").fetchone()[0])
    finally:
        db.close()


def run(n: int, model: Path, tmp: Path, *, broker: str | None,
        broker_proc: subprocess.Popen[bytes] | None, tick_s: float, interval_s: float,
        connect_batch: int, mode: str, sim_procs: int) -> dict[str, Any]:
    port = free_port()
    data = tmp / "fleet"
    probe = tmp / "probe.json"
    args = [sys.executable, "-m", "bench.server_probe", str(probe),
            "serve", "--data", str(data),
            "--port", str(port), "--mqtt-port", "0", "--rollout-tick", str(tick_s),
            "--insecure"]  # plain MQTT with passwords (the bench's Mosquitto), as measured before
    if broker:
        args += ["--broker", broker]
    log = (tmp / "server.log").open("wb")
    env = {**os.environ, "BENCH_SERVER": mode}
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    label = ("mosquitto" if broker else "embedded amqtt") + f", {MODES[mode]}"
    try:
        token_file = data / "admin.token"
        wait_for(lambda: token_file.exists() and (data / "ports.json").exists(), 30,
                 "server started")
        token = token_file.read_text().strip()
        client = FleetClient(url, token, timeout_s=300)
        publish(client, tmp, model, ["1.0.0", "2.0.0"])
        print(f"{n} on {label}: enrolling and connecting in batches of {connect_batch}",
              flush=True)
        t_connect = time.monotonic()
        kw = {"server": url, "admin_token": token, "count": n,
              "report_interval_s": interval_s, "inferences_per_report": 50}
        fleet: Any = FleetProcs(procs=sim_procs, **kw) if sim_procs > 1 else SimFleet(**kw)
        # the bench's own polling of the server: as before up to 1,000 devices, slower above
        # (a rollout's detail lists every device)
        period = 0.1 if n <= 1000 else 2.0
        try:
            fleet.start(connect_batch=connect_batch, batch_timeout_s=600)
            fleet.wait_connected(600)
            connect_s = time.monotonic() - t_connect
            print(f"{n}: connected in {connect_s:.1f} s; deploying v1", flush=True)
            t_v1, stored_v1 = time.monotonic(), stored_total(url, token)
            client.deploy("sample@1.0.0", group="sim")
            wait_for(lambda: fleet.active_refs().get("sample@1.0.0", 0) == n, 1800,
                     "v1 on every simulated device", period)
            wait_for(lambda: all(d["active_bundle"] == "sample@1.0.0"
                                 for d in client.list_devices("sim")), 600,
                     "server sees v1 everywhere", period)
            v1_s = time.monotonic() - t_v1
            v1_rate = (stored_total(url, token) - stored_v1) / v1_s
            print(f"{n}: v1 everywhere in {v1_s:.1f} s, {v1_rate:.0f} device messages "
                  "stored/s meanwhile", flush=True)
            rows0 = telemetry_rows(data)
            sent0, cpu0 = fleet.stats["messages_sent"], cpu_s(proc.pid)
            bcpu0 = cpu_s(broker_proc.pid) if broker_proc else 0.0
            procs = {"server": proc.pid, "bench + simulator" if sim_procs == 1
                     else "bench": os.getpid()}
            procs.update({f"simulator {k}": pid for k, pid in
                          enumerate(getattr(fleet, "pids", []))})
            if broker_proc:
                procs["broker"] = broker_proc.pid
            sampler = Sampler(server_pid=proc.pid, probe_file=probe, procs=procs,
                              metrics_url=f"{url}/metrics", token=token).start()
            t0, t0_wall = time.monotonic(), time.time()
            print(f"{n}: v1 everywhere; rolling out v2", flush=True)
            rid = client.create_rollout("sample@2.0.0", group="sim", plan=plan_for(n))["id"]
            done = wait_for(lambda: (r := client.get_rollout(rid))["state"] in (
                "completed", "halted") and r, 3600, "rollout finished", period)
            elapsed = time.monotonic() - t0
            profile = sampler.stop()
            cpu = cpu_s(proc.pid) - cpu0
            bcpu = (cpu_s(broker_proc.pid) - bcpu0) if broker_proc else None
            rows = telemetry_rows(data) - rows0
            sent = fleet.stats["messages_sent"] - sent0
            if done["state"] != "completed":
                print(f"{n}: {done['state']}: {done['last_evaluation']}", flush=True)
            return {"devices": n, "broker": label, "state": done["state"],
                    "connect_s": connect_s, "to_100_s": elapsed, "server_cpu_s": cpu,
                    "server_cpu_pct": 100 * cpu / elapsed,
                    "broker_cpu_pct": None if bcpu is None else 100 * bcpu / elapsed,
                    "telemetry_per_s": rows / elapsed, "sim_msgs_per_s": sent / elapsed,
                    "on_v2": fleet.active_refs().get("sample@2.0.0", 0),
                    "stages": stage_timeline(done, t0_wall), "profile": profile,
                    "v1_s": v1_s, "v1_stored_per_s": v1_rate}
        finally:
            fleet.stop()
            client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def one(n: int, kind: str, mode: str, opts: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = write_sample_model(tmp / "sample.onnx")
        kw = {"tick_s": opts.tick, "interval_s": opts.interval,
              "connect_batch": opts.connect_batch, "mode": mode,
              "sim_procs": opts.sim_procs}
        try:
            if kind == "mosquitto":
                with mosquitto(tmp) as (url, bproc):
                    return run(n, model, tmp, broker=url, broker_proc=bproc, **kw)
            return run(n, model, tmp, broker=None, broker_proc=None, **kw)
        except Exception as e:  # noqa: BLE001 - a failed size is a row in the table
            print(f"{n} on {kind}: FAILED: {e}", flush=True)
            log = tmp / "server.log"
            if log.exists():
                print("server log, last lines:\n" + "\n".join(
                    log.read_text(errors="replace").splitlines()[-40:]), flush=True)
            return {"devices": n, "broker": kind, "state": f"failed: {str(e)[:60]}"}


def raise_fd_limit(devices: int) -> int:
    """One socket per simulated device in this process (and one per device in Mosquitto,
    which inherits the limit): lift the soft RLIMIT_NOFILE towards the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * devices + 1024
    if soft != resource.RLIM_INFINITY and soft < want:
        soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def _f(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_profiles(rows: list[dict[str, Any]]) -> None:
    """Where each run's time went: stage by stage, and CPU by process and server thread."""
    print("\n| devices | broker, server | " + " | ".join(
        f"stage {k + 1} s" for k in range(4)) + " |")
    print("|---|---|" + "---|" * 4)
    for r in rows:
        if "stages" in r:
            cells = [f"{name}: {secs:.1f}" for name, secs in r["stages"]]
            print(f"| {r['devices']:,} | {r['broker']} | " + " | ".join(cells) + " |")
    for r in rows:
        prof = r.get("profile")
        if not prof:
            continue
        wall = prof["wall_s"]
        print(f"\n{r['devices']:,} devices, {r['broker']}: v1 deployed everywhere in "
              f"{r['v1_s']:.1f} s, {r['v1_stored_per_s']:.0f} device messages stored/s")
        print(f"\n{r['devices']:,} devices, {r['broker']}: CPU over the rollout "
              f"({wall:.1f} s), % of one core; server DB = time inside registry transactions")
        print("| what | CPU % | DB % | transactions |")
        print("|---|---:|---:|---:|")
        for label, sec in sorted(prof["proc_cpu_s"].items()):
            print(f"| process: {label} | {100 * sec / wall:.0f} | | |")
        names = set(prof["server_threads_cpu_s"]) | set(prof["server_db_s"])
        for name in sorted(names, key=lambda k: -prof["server_threads_cpu_s"].get(k, 0)):
            cpu = prof["server_threads_cpu_s"].get(name)
            db = prof["server_db_s"].get(name)
            print(f"| server thread: {name} | {_f(cpu and 100 * cpu / wall, '.0f')} | "
                  f"{_f(db and 100 * db / wall, '.0f')} | "
                  f"{prof['server_db_calls'].get(name, '')} |")
        print(f"| ingest queue depth, max / mean | {_f(prof['queue_depth_max'], '.0f')} / "
              f"{_f(prof['queue_depth_mean'], '.0f')} | | |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet_sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, nargs="+", default=[200, 1000])
    p.add_argument("--broker", choices=("embedded", "mosquitto"), default="mosquitto")
    p.add_argument("--baseline", type=int, default=200,
                   help="with --broker mosquitto, first run this many devices on the "
                        "embedded broker (0 = skip)")
    p.add_argument("--tick", type=float, default=5.0, help="server --rollout-tick seconds")
    p.add_argument("--interval", type=float, default=2.0, help="device report interval s")
    p.add_argument("--connect-batch", type=int, default=100)
    p.add_argument("--sim-procs", type=int, default=1,
                   help="simulator processes (1: the devices run in this process)")
    p.add_argument("--server", choices=tuple(MODES), nargs="+",
                   default=["before", "after"],
                   help="server variants run in turn for each size (bench/server_probe.py): "
                        "before = driver polls every --tick, one commit per ingested write; "
                        "batched = batched ingest commits only; after = the server as it is")
    opts = p.parse_args(argv)
    print(f"RLIMIT_NOFILE soft limit: {raise_fd_limit(max(opts.devices))}", flush=True)
    runs = [(n, opts.broker, mode) for n in opts.devices for mode in opts.server]
    if opts.broker == "mosquitto" and opts.baseline:
        runs.insert(0, (opts.baseline, "embedded", opts.server[-1]))
    rows = []
    for n, kind, mode in runs:
        rows.append(one(n, kind, mode, opts))
        print(rows[-1], flush=True)
    polled = {(r["devices"], r["broker"].split(",")[0]): r.get("to_100_s") for r in rows
              if r["broker"].endswith(MODES[opts.server[0]])}
    print(f"\n| devices | broker, server | result | connect s | to 100% s | "
          f"vs {opts.server[0]} | "
          "server CPU s | server CPU % of a core | broker CPU % | telemetry stored/s | "
          "sim msgs/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = polled.get((r["devices"], r["broker"].split(",")[0]))
        ratio = r.get("to_100_s") / base if base and r.get("to_100_s") else None
        print(f"| {r['devices']:,} | {r['broker']} | {r['state']} | "
              f"{_f(r.get('connect_s'), '.1f')} | {_f(r.get('to_100_s'), '.1f')} | "
              f"{_f(ratio, '.2f')} | "
              f"{_f(r.get('server_cpu_s'), '.1f')} | {_f(r.get('server_cpu_pct'), '.0f')} | "
              f"{_f(r.get('broker_cpu_pct'), '.0f')} | {_f(r.get('telemetry_per_s'), '.1f')} | "
              f"{_f(r.get('sim_msgs_per_s'), '.1f')} |")
    print_profiles(rows)
    return 0 if all(r["state"] == "completed" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
