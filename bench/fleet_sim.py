"""Fleet simulator benchmark: a good rollout to 100% at 200 and 1,000 simulated devices.

Runs ``fleet-server serve`` as its own process (so its CPU is measured alone), enrols N
simulated devices (real paho MQTT clients in this process), puts v1 everywhere, then times a
gated rollout of v2 (shadow 5% -> 5% -> 25% -> 100%) and reports server CPU and the telemetry
messages per second the server ingested. Usage: ``python bench/fleet_sim.py [200 1000]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from device_agent.simulator import SimFleet  # noqa: E402
from fleet_server.api_client import FleetClient  # noqa: E402
from model_bundles.samples import write_sample_model  # noqa: E402
from tests.rollouts.sim_helpers import FAST_PLAN, free_port, publish, wait_for  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def plan_for(n: int) -> dict:
    stages = [dict(s) for s in FAST_PLAN["stages"]]
    stages[-1] = {**stages[-1], "gates": {**stages[-1]["gates"], "min_devices": int(n * 0.75)},
                  "deadline_s": 600}
    stages[2] = {**stages[2], "gates": {**stages[2]["gates"], "min_devices": int(n * 0.25 * 0.8)}}
    return {"stages": stages}


def run(n: int, model: Path, tmp: Path) -> dict[str, float]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fleet_server.cli", "serve", "--data",
                             str(tmp / "fleet"), "--port", str(port), "--mqtt-port", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        token_file = tmp / "fleet" / "admin.token"
        wait_for(lambda: token_file.exists() and (tmp / "fleet" / "ports.json").exists(), 30)
        token = token_file.read_text().strip()
        client = FleetClient(url, token)
        publish(client, tmp, model, ["1.0.0", "2.0.0"])
        print(f'{n}: enrolling', flush=True)
        fleet = SimFleet(server=url, admin_token=token, count=n, report_interval_s=2.0,
                         inferences_per_report=50).start()
        try:
            fleet.wait_connected(300)
            print(f'{n}: connected; deploying v1', flush=True)
            client.deploy("sample@1.0.0", group="sim")
            wait_for(lambda: all(d["active_bundle"] == "sample@1.0.0"
                                 for d in client.list_devices("sim")), 600)
            sent0, cpu0, t0 = fleet.stats["messages_sent"], cpu_s(proc.pid), time.monotonic()
            print(f'{n}: v1 everywhere; rolling out v2', flush=True)
            rid = client.create_rollout("sample@2.0.0", group="sim", plan=plan_for(n))["id"]
            done = wait_for(lambda: (r := client.get_rollout(rid))["state"] in (
                "completed", "halted") and r, 900)
            elapsed = time.monotonic() - t0
            cpu = cpu_s(proc.pid) - cpu0
            sent = fleet.stats["messages_sent"] - sent0
            return {"devices": n, "state": done["state"], "to_100_s": elapsed,
                    "server_cpu_s": cpu, "server_cpu_pct": 100 * cpu / elapsed,
                    "reports_per_s": sent / elapsed}
        finally:
            fleet.stop()
            client.close()
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [200, 1000]
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as d:
            model = write_sample_model(Path(d) / "sample.onnx")
            rows.append(run(n, model, Path(d)))
            print(rows[-1], flush=True)
    print(f"{'devices':>8} {'state':>10} {'to 100% s':>10} {'server CPU s':>13} "
          f"{'CPU %':>7} {'reports/s':>10}")
    for r in rows:
        print(f"{r['devices']:>8} {r['state']:>10} {r['to_100_s']:>10.1f} "
              f"{r['server_cpu_s']:>13.1f} {r['server_cpu_pct']:>7.0f} "
              f"{r['reports_per_s']:>10.1f}")


if __name__ == "__main__":
    main()
