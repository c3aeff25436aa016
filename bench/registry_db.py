"""The registry's store calls on SQLite and on PostgreSQL, in one process, same data.

    python -m bench.registry_db [--devices 1000] [--reports 20] [--postgres URL]

Without ``--postgres`` (or ``EDGEFLEET_TEST_POSTGRES_URL``) a throwaway cluster is started
with ``scripts/postgres-throwaway.sh`` (Debian's postgresql) and removed at the end; it runs
with ``fsync=off``, so its write rows are an upper bound. Each engine gets a new, empty
database at the schema's head. Rows: telemetry ingest (``add_telemetry``: dedupe, insert,
device update in one transaction), the same in batches of 256 (``add_telemetry_many``, the
ingest worker's path: a few statements per batch), a device read by key, an instruction seq
(``issue_seq``: one ``UPDATE ... RETURNING``), one 50-device page of the devices list
sorted by latency (window CTE over the telemetry), and the console's change cursor.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from fleet_server.db import Database, open_database, sqlite_url
from fleet_server.device_query import DeviceQuery
from fleet_server.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "postgres-throwaway.sh"
BATCH = 256  # fleet_server.report_ingest.BATCH: what the ingest worker hands the store at most


def _rate(fn: Callable[[int], object], n: int) -> tuple[float, float]:
    """Calls per second and the mean ms per call of ``fn(i)`` for i in range(n)."""
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    elapsed = time.perf_counter() - start
    return n / elapsed, elapsed / n * 1000


def _run(db: Database, devices: int, reports: int) -> list[tuple[str, float, float]]:
    reg = Registry(db)
    ids = [f"dev-{i:05d}" for i in range(devices)]
    for d in ids:
        reg.add_device(device_id=d, group="g", public_key="", mqtt_secret_hash="h")
    now = time.time()
    rows = []
    total = devices * reports

    def ingest(i: int) -> None:
        reg.add_telemetry(device_id=ids[i % devices], seq=i // devices + 1, ts=now - 60 + i / total,
                          data={"inferences": 10, "errors": 0,
                                "latency_ms": {"p50": 1.0, "p95": 2.0 + i % 7, "p99": 3.0}})

    rows.append(("telemetry ingest", *_rate(ingest, total)))

    def ingest_many(b: int) -> None:  # the ingest worker's path, seqs after the ones above
        reg.add_telemetry_many([
            (ids[k % devices], k // devices + 1, now - 60 + k / total / 2,
             {"inferences": 10, "errors": 0, "latency_ms": {"p50": 1.0, "p95": 2.0 + k % 7,
                                                            "p99": 3.0}})
            for k in range(total + b * BATCH, total + (b + 1) * BATCH)])

    per_batch, batch_ms = _rate(ingest_many, max(1, total // BATCH))
    rows.append((f"telemetry ingest, batches of {BATCH} (per report)", per_batch * BATCH,
                 batch_ms / BATCH))
    rows.append(("device by key", *_rate(lambda i: reg.get_device(device_id=ids[i % devices]),
                                          2000)))
    rows.append(("issue_seq", *_rate(lambda i: reg.issue_seq(
        device_id=ids[i % devices], sha256="a" * 64, deployment_id="dep-1"), 1000)))
    page = DeviceQuery(sort="latency", per_page=50)
    rows.append(("devices page, sort by latency", *_rate(
        lambda i: reg.query_devices(query=page, now=now), 20)))
    rows.append(("change cursor", *_rate(lambda i: reg.change_cursor(), 2000)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--reports", type=int, default=20, help="telemetry reports per device")
    parser.add_argument("--postgres", default=os.environ.get("EDGEFLEET_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    cluster = None
    base = args.postgres
    if not base:
        cluster = tempfile.mkdtemp(prefix="edgefleet-pg-")
        base = subprocess.run(["bash", str(SCRIPT), "start", cluster], check=True,
                              capture_output=True, text=True).stdout.strip()
    admin = sa.create_engine(sa.make_url(base).set(drivername="postgresql+psycopg"),
                             isolation_level="AUTOCOMMIT")
    name = f"edgefleet_bench_{uuid.uuid4().hex[:8]}"
    results = {}
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        with tempfile.TemporaryDirectory() as tmp:
            for engine, url in (("sqlite", sqlite_url(Path(tmp) / "registry.db")),
                                ("postgresql", sa.make_url(base).set(database=name)
                                 .render_as_string(hide_password=False))):
                db = open_database(url)
                try:
                    results[engine] = _run(db, args.devices, args.reports)
                finally:
                    db.close()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        if cluster:
            subprocess.run(["bash", str(SCRIPT), "stop", cluster], check=False)
    print(f"{args.devices} devices, {args.devices * args.reports} telemetry reports; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| operation | SQLite calls/s | SQLite ms | PostgreSQL calls/s | PostgreSQL ms | "
          "PostgreSQL / SQLite time |")
    print("|---|---:|---:|---:|---:|---:|")
    for (op, s_rate, s_ms), (_, p_rate, p_ms) in zip(results["sqlite"], results["postgresql"],
                                                     strict=True):
        print(f"| {op} | {s_rate:,.0f} | {s_ms:.3f} | {p_rate:,.0f} | {p_ms:.3f} | "
              f"{p_ms / s_ms:.2f} |")


if __name__ == "__main__":
    main()
