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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from device_agent.simulator import SimFleet  # noqa: E402
from fleet_server.api_client import FleetClient  # noqa: E402
from model_bundles.samples import write_sample_model  # noqa: E402
from tests.rollouts.sim_helpers import FAST_PLAN, free_port, publish, wait_for  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
MOSQUITTO_CONF = """listener {port} 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
max_connections -1
"""


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def plan_for(n: int) -> dict[str, Any]:
    """The test plan (shadow 5% -> 5% -> 25% -> 100%) with device minimums scaled to ``n``:
    half the 5% cohort, 80% of the 25% cohort, 75% of the fleet."""
    five = max(1, math.ceil(n * 0.05) // 2)
    mins = [five, five, max(1, int(math.ceil(n * 0.25) * 0.8)), max(1, int(n * 0.75))]
    stages = [{**s, "deadline_s": 600, "gates": {**s["gates"], "min_devices": m}}
              for s, m in zip(FAST_PLAN["stages"], mins, strict=True)]
    return {"stages": stages}


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
        connect_batch: int) -> dict[str, Any]:
    port = free_port()
    data = tmp / "fleet"
    args = [sys.executable, "-m", "fleet_server.cli", "serve", "--data", str(data),
            "--port", str(port), "--mqtt-port", "0", "--rollout-tick", str(tick_s),
            "--insecure"]  # plain MQTT with passwords (the bench's Mosquitto), as measured before
    if broker:
        args += ["--broker", broker]
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    label = "mosquitto" if broker else "embedded amqtt"
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
        fleet = SimFleet(server=url, admin_token=token, count=n, report_interval_s=interval_s,
                         inferences_per_report=50)
        try:
            fleet.start(connect_batch=connect_batch, batch_timeout_s=300)
            fleet.wait_connected(300)
            connect_s = time.monotonic() - t_connect
            print(f"{n}: connected in {connect_s:.1f} s; deploying v1", flush=True)
            client.deploy("sample@1.0.0", group="sim")
            wait_for(lambda: all(d["active_bundle"] == "sample@1.0.0"
                                 for d in client.list_devices("sim")), 600, "v1 everywhere")
            rows0 = telemetry_rows(data)
            sent0, cpu0 = fleet.stats["messages_sent"], cpu_s(proc.pid)
            bcpu0 = cpu_s(broker_proc.pid) if broker_proc else 0.0
            t0 = time.monotonic()
            print(f"{n}: v1 everywhere; rolling out v2", flush=True)
            rid = client.create_rollout("sample@2.0.0", group="sim", plan=plan_for(n))["id"]
            done = wait_for(lambda: (r := client.get_rollout(rid))["state"] in (
                "completed", "halted") and r, 900, "rollout finished")
            elapsed = time.monotonic() - t0
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
                    "on_v2": fleet.active_refs().get("sample@2.0.0", 0)}
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


def one(n: int, kind: str, opts: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = write_sample_model(tmp / "sample.onnx")
        kw = {"tick_s": opts.tick, "interval_s": opts.interval,
              "connect_batch": opts.connect_batch}
        try:
            if kind == "mosquitto":
                with mosquitto(tmp) as (url, bproc):
                    return run(n, model, tmp, broker=url, broker_proc=bproc, **kw)
            return run(n, model, tmp, broker=None, broker_proc=None, **kw)
        except Exception as e:  # noqa: BLE001 - a failed size is a row in the table
            print(f"{n} on {kind}: FAILED: {e}", flush=True)
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
    opts = p.parse_args(argv)
    print(f"RLIMIT_NOFILE soft limit: {raise_fd_limit(max(opts.devices))}", flush=True)
    runs = [(n, opts.broker) for n in opts.devices]
    if opts.broker == "mosquitto" and opts.baseline:
        runs.insert(0, (opts.baseline, "embedded"))
    rows = []
    for n, kind in runs:
        rows.append(one(n, kind, opts))
        print(rows[-1], flush=True)
    print("\n| devices | broker | result | connect s | to 100% s | server CPU s | "
          "server CPU % of a core | broker CPU % | telemetry stored/s | sim msgs/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['devices']:,} | {r['broker']} | {r['state']} | "
              f"{_f(r.get('connect_s'), '.1f')} | {_f(r.get('to_100_s'), '.1f')} | "
              f"{_f(r.get('server_cpu_s'), '.1f')} | {_f(r.get('server_cpu_pct'), '.0f')} | "
              f"{_f(r.get('broker_cpu_pct'), '.0f')} | {_f(r.get('telemetry_per_s'), '.1f')} | "
              f"{_f(r.get('sim_msgs_per_s'), '.1f')} |")
    return 0 if all(r["state"] == "completed" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
