"""Replicas benchmark: leader failover and telemetry ingest through Mosquitto + PostgreSQL.

Starts a Mosquitto (TLS, ``fleet-server mosquitto-config``), ``fleet-server serve
--replica-id`` processes on one PostgreSQL (``EDGEFLEET_TEST_POSTGRES_URL``, or a throwaway
cluster from ``scripts/postgres-throwaway.sh``) and N simulated devices in this process.

- **ingest**: every device on a bundle, reporting telemetry every ``--interval`` s for
  ``--seconds``; the rate the registry stored it (rows per second over the window), then,
  once reporting stopped, the reports sent, stored, lost and duplicated (stored by device and
  seq: ``telemetry``'s key). One replica first (the baseline), then two.
- **failover**: two replicas with the default lease (TTL 6 s, renewed every 2 s), a rollout
  that keeps evaluating; the leader is killed with SIGKILL and the time to the first
  evaluation written by the other replica (``rollouts.last_evaluation.at``) is measured,
  ``--kills`` times (the killed replica is restarted between kills).
- **offline share**: how Mosquitto shares messages with a persistent shared subscriber that
  dropped (why a killed replica must come back under its name).

    python -m bench.replicas --devices 200 --interval 0.5 --seconds 10 --kills 2
    python -m bench.replicas --devices 500 --flood 60   # the flood rows only
    python -m bench.replicas --devices 2000 --flood 80 --replicas 2   # a longer flood, 2 only

- **flood** (``--flood N``): every device sends N telemetry windows signed before the clock
  starts, all at once (outboxes flushing after an outage), one replica then two: the rate
  the replicas store when the simulator's signing is not what limits the load.

The figures are in docs/scaling.md, "Replicas: measured".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from bench.proc_probe import component_cpu  # noqa: E402
from device_agent.simulator import SimFleet  # noqa: E402
from fleet_server.api_client import FleetClient  # noqa: E402
from fleet_server.cli import main as fleet_server_main  # noqa: E402
from model_bundles.samples import write_sample_model  # noqa: E402
from tests.replicas.conftest import Replica, leader_of, mosquitto  # noqa: E402
from tests.rollouts.sim_helpers import free_port, publish, wait_for  # noqa: E402
from tests.security.broker_fleet import MOSQUITTO  # noqa: E402

NEVER_PASSES: dict[str, Any] = {"stages": [
    {"name": "100%", "kind": "canary", "percent": 100, "deadline_s": 3600,
     "gates": {"min_devices": 1_000_000, "min_samples": 0, "min_agreement": None}}]}


@contextmanager
def postgres() -> Iterator[str]:
    url = os.environ.get("EDGEFLEET_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    where = Path(tempfile.mkdtemp(prefix="edgefleet-pg-"))
    script = ROOT / "scripts" / "postgres-throwaway.sh"
    out = subprocess.run(["bash", str(script), "start", str(where)], capture_output=True,
                         text=True, check=True, timeout=120)
    try:
        yield out.stdout.strip()
    finally:
        subprocess.run(["bash", str(script), "stop", str(where)], capture_output=True,
                       check=False, timeout=120)


def new_database(server: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(sa.make_url(server).set(drivername="postgresql+psycopg"),
                             isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = sa.make_url(server).set(database=name).render_as_string(hide_password=False)
    assert fleet_server_main(["db", "upgrade", "--db", url]) == 0
    return url


@contextmanager
def cluster(work: Path, server: str, names: tuple[str, ...],
            extra: tuple[str, ...] = ()) -> Iterator[tuple[list[Replica], str]]:
    db_url = new_database(server)
    data = work / "fleet"
    with ExitStack() as stack:
        port = stack.enter_context(mosquitto(data, work / "mosquitto", ("r1", "r2")))
        replicas: list[Replica] = []
        stack.callback(_stop_all, replicas)
        for name in names:
            replicas.append(Replica(name, data=data, db_url=db_url, broker_port=port,
                                    log_dir=work, extra=extra))
        yield replicas, db_url


def _stop_all(replicas: list[Replica]) -> None:
    for r in replicas:
        r.stop()


def _scalar(engine: sa.Engine, sql: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar()


@contextmanager
def _published_fleet(work: Path, replicas: list[Replica], db_url: str, model: Path,
                     devices: int, interval: float
                     ) -> Iterator[tuple[FleetClient, SimFleet, sa.Engine]]:
    """sample@1.0.0 published through the last replica, ``devices`` simulated devices
    connected to it, and an engine on the replicas' database."""
    r = replicas[-1]
    token = (r.data / "admin.token").read_text().strip()
    ca = r.data / "ca" / "bundle.pem"
    engine = sa.create_engine(sa.make_url(db_url).set(drivername="postgresql+psycopg"))
    with FleetClient(r.url, token, ca_bundle=ca) as client:
        publish(client, work, model, ["1.0.0"])
        fleet = SimFleet(server=r.url, admin_token=token, count=devices, group="sim",
                         report_interval_s=interval, ca_bundle=ca).start()
        try:
            fleet.wait_connected()
            yield client, fleet, engine
        finally:
            fleet.stop()
            engine.dispose()


def ingest(work: Path, server: str, names: tuple[str, ...], devices: int, interval: float,
           seconds: float, model: Path) -> dict[str, Any]:
    with cluster(work, server, names) as (replicas, db_url), \
            _published_fleet(work, replicas, db_url, model, devices, interval) as (
                client, fleet, engine):
        client.deploy("sample@1.0.0", group="sim")
        wait_for(lambda: fleet.active_refs()["sample@1.0.0"] == devices, 300,
                 "the bundle on every device")
        time.sleep(2 * interval)  # every device reporting
        rows0, sent0, t0 = (_scalar(engine, "SELECT count(*) FROM telemetry"),
                            _sent(fleet), time.monotonic())
        time.sleep(seconds)
        rows1, sent1, t1 = (_scalar(engine, "SELECT count(*) FROM telemetry"),
                            _sent(fleet), time.monotonic())
        fleet.stop_reporting()
        sent = {(d.device_id, s) for d in fleet.devices for s in d.sent_telemetry}
        deadline = time.monotonic() + 120
        while (_scalar(engine, "SELECT count(*) FROM telemetry") < len(sent)
               and time.monotonic() < deadline):
            time.sleep(0.5)
        with engine.connect() as conn:
            stored = [(d, int(s)) for d, s in conn.execute(
                sa.text("SELECT device_id, seq FROM telemetry"))]
    window = t1 - t0
    return {"replicas": len(names), "offered": (sent1 - sent0) / window,
            "stored": (rows1 - rows0) / window, "sent": len(sent),
            "lost": len(sent - set(stored)), "duplicated": len(stored) - len(set(stored))}


def flood(work: Path, server: str, names: tuple[str, ...], devices: int, backlog: int,
          model: Path) -> dict[str, Any]:
    """Every device publishes ``backlog`` telemetry windows signed beforehand, at once
    (outboxes flushing after an outage): what the replicas store per second when the
    simulator's signing is off the clock."""
    with cluster(work, server, names) as (replicas, db_url), \
            _published_fleet(work, replicas, db_url, model, devices, 3600.0) as (
                client, fleet, engine):
        client.deploy("sample@1.0.0", group="sim")
        wait_for(lambda: fleet.active_refs()["sample@1.0.0"] == devices, 300,
                 "the bundle on every device")
        fleet.stop_reporting()
        queued = [d.backlog(backlog, 10.0, 100) for d in fleet.devices]
        total = sum(len(q) for q in queued)
        rows0 = _scalar(engine, "SELECT count(*) FROM telemetry")
        cpu0, t0 = component_cpu(), time.monotonic()
        for k in range(backlog):  # interleaved, as a fleet's devices send
            for device, messages in zip(fleet.devices, queued, strict=True):
                device.flush(messages[k:k + 1])
        published = time.monotonic()
        deadline = t0 + 600
        while (_scalar(engine, "SELECT count(*) FROM telemetry") < rows0 + total
               and time.monotonic() < deadline):
            time.sleep(0.25)  # a count over the table costs PostgreSQL CPU too
        t1, cpu = time.monotonic(), component_cpu()
        cpu.subtract(cpu0)
        sent = {(d.device_id, s) for d in fleet.devices for s in d.sent_telemetry}
        with engine.connect() as conn:
            stored = [(d, int(s)) for d, s in conn.execute(
                sa.text("SELECT device_id, seq FROM telemetry"))]
    return {"replicas": len(names), "offered": total / (published - t0),
            "stored": total / (t1 - t0), "sent": len(sent),
            "lost": len(sent - set(stored)), "duplicated": len(stored) - len(set(stored)),
            "window_s": t1 - t0, "cpu_s": dict(cpu)}


def _sent(fleet: SimFleet) -> int:
    return sum(len(d.sent_telemetry) for d in fleet.devices)


def failover(work: Path, server: str, devices: int, kills: int, model: Path) -> list[float]:
    out: list[float] = []
    with cluster(work, server, ("r1", "r2"), ("--rollout-tick", "1")) as (replicas, db_url), \
            _published_fleet(work, replicas, db_url, model, devices, 1.0) as (
                client, fleet, engine):
        client.create_rollout("sample@1.0.0", group="sim", plan=NEVER_PASSES)
        for _ in range(kills):
            leader = wait_for(lambda: leader_of(replicas), 60, "a leader")
            wait_for(lambda: _last_evaluation(engine) is not None, 60, "an evaluation")
            leader.kill()  # returns once the process is gone
            killed_at = time.time()
            after = wait_for(partial(_evaluated_after, engine, killed_at), 60,
                             "an evaluation by the new leader")
            out.append(after - killed_at)
            leader.start()
    return out


def _evaluated_after(engine: sa.Engine, t: float) -> float | None:
    at = _last_evaluation(engine)
    return at if at is not None and at > t else None


def _last_evaluation(engine: sa.Engine) -> float | None:
    raw = _scalar(engine, "SELECT last_evaluation FROM rollouts LIMIT 1")
    return None if not raw else float(json.loads(raw)["at"])


def offline_share(work: Path, messages: int = 10) -> tuple[int, int, int]:
    """How Mosquitto shares messages with a persistent MQTT v5 shared subscriber that is
    offline: (to the live one, held for the offline one, delivered when it came back)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    port = free_port()
    conf = work / "plain.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    + ("user root\n" if os.geteuid() == 0 else ""))
    broker = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    got = {"a": 0, "b": 0}

    def subscriber(name: str) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.on_message = lambda *_: got.__setitem__(name, got[name] + 1)
        c.connect("127.0.0.1", port, clean_start=False, properties=props)
        c.loop_start()
        c.subscribe("$share/g/t/#", qos=1)
        return c

    try:
        wait_for(lambda: _connects(port), 10, "mosquitto")
        dropped = subscriber("a")
        subscriber("b")
        time.sleep(0.5)
        dropped.loop_stop()
        sock = dropped.socket()
        if sock is not None:
            sock.close()  # dropped without DISCONNECT: the session stays
        time.sleep(1.0)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="pub")
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        for _ in range(messages):
            pub.publish("t/x", b"m", qos=1).wait_for_publish(5)
        wait_for(lambda: got["b"] > 0, 10, "a delivery")
        time.sleep(0.5)
        live, held = got["b"], messages - got["b"]
        subscriber("a")
        wait_for(lambda: got["a"] >= held, 10, "the held messages")
        return live, held, got["a"]
    finally:
        broker.terminate()
        broker.wait(10)


def _connects(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
    except OSError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.5,
                        help="seconds between a device's telemetry reports (default 0.5)")
    parser.add_argument("--seconds", type=float, default=10.0, help="ingest window")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--flood", type=int, default=0, metavar="N",
                        help="only the flood rows: each device sends N reports signed "
                        "beforehand, all at once (at most the server's burst, 100)")
    parser.add_argument("--replicas", type=int, nargs="+", choices=(1, 2), default=(1, 2),
                        help="the flood rows to run (default: 1 then 2; a flood of more than "
                        "100,000 messages overflows Mosquitto's queue for a single replica)")
    args = parser.parse_args()
    if args.flood:
        _flood_rows(args.devices, args.flood, args.replicas)
        return
    with tempfile.TemporaryDirectory(prefix="edgefleet-replicas-") as tmp, \
            postgres() as server:
        work = Path(tmp)
        model = write_sample_model(work / "sample.onnx")
        rows = [ingest(work / f"ingest{n}", server, names, args.devices, args.interval,
                       args.seconds, model)
                for n, names in ((1, ("r1",)), (2, ("r1", "r2")))]
        times = failover(work / "failover", server, args.devices, args.kills, model)
        live, held, back = offline_share(work)
    base = rows[0]["stored"] or 1.0
    print(f"\ntelemetry ingest, {args.devices} devices every {args.interval} s, "
          f"{args.seconds:g} s window, Mosquitto + PostgreSQL")
    print("| replicas | offered msg/s | stored msg/s | ratio to 1 replica | sent | lost | "
          "duplicated |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['replicas']} | {r['offered']:,.0f} | {r['stored']:,.0f} | "
              f"{r['stored'] / base:.2f} | {r['sent']:,} | {r['lost']} | {r['duplicated']} |")
    print(f"\nleader failover (SIGKILL to the new leader's first rollout evaluation), "
          f"lease TTL 6 s, renew 2 s, {len(times)} kills")
    print("| min s | median s | max s | bound s (TTL + renew) |")
    print("|---|---|---|---|")
    print(f"| {min(times):.2f} | {statistics.median(times):.2f} | {max(times):.2f} | 8 |")
    print("\nMosquitto, two persistent MQTT v5 shared subscribers, one dropped, 10 published")
    print("| to the live one | held for the dropped one | delivered to it when back |")
    print("|---|---|---|")
    print(f"| {live} | {held} | {back} |")


def _flood_rows(devices: int, backlog: int, replicas: tuple[int, ...]) -> None:
    with tempfile.TemporaryDirectory(prefix="edgefleet-replicas-") as tmp, \
            postgres() as server:
        work = Path(tmp)
        model = write_sample_model(work / "sample.onnx")
        rows = [flood(work / f"flood{n}", server, ("r1", "r2")[:n], devices, backlog, model)
                for n in replicas]
    base = rows[0]["stored"] or 1.0
    print(f"\ntelemetry flood, {devices} devices x {backlog} reports signed beforehand, "
          "Mosquitto + PostgreSQL")
    print(f"| replicas | queued by the devices msg/s | stored msg/s | ratio to {rows[0]['replicas']} "
          "replica(s) | sent | lost | duplicated |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['replicas']} | {r['offered']:,.0f} | {r['stored']:,.0f} | "
              f"{r['stored'] / base:.2f} | {r['sent']:,} | {r['lost']} | {r['duplicated']} |")
    print(f"\nCPU over the flood window by component, in % of one core (load average "
          f"{os.getloadavg()[0]:.1f} at the end; {os.cpu_count()} cores), and CPU ms per "
          "1,000 stored messages")
    print("| replicas | window s | " + " | ".join(COMPONENTS) + " | all | all ms / 1,000 msg |")
    print("|---|---:|" + "---:|" * (len(COMPONENTS) + 2))
    for r in rows:
        cpu, w = r["cpu_s"], r["window_s"]
        cells = [f"{100 * cpu.get(c, 0.0) / w:.0f}" for c in COMPONENTS]
        every = sum(cpu.values())
        print(f"| {r['replicas']} | {w:.1f} | " + " | ".join(cells)
              + f" | {100 * every / w:.0f} | {1000 * every / r['sent'] * 1000:.0f} |")


COMPONENTS = ("replica r1", "replica r2", "mosquitto", "postgresql", "simulator (bench process)")


if __name__ == "__main__":
    main()
