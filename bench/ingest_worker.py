"""One replica's ingest worker on PostgreSQL (and SQLite): signed telemetry per second.

    python -m bench.ingest_worker [--devices 1000] [--reports 10] [--postgres URL]

Runs the server's own ingest path in this process, without MQTT: a real ``MqttBridge``'s
``prepare`` (topic, revocation, Ed25519 signature, parse: what every report costs) and
``store``, driven by a real ``ReportIngest`` worker in its batch transactions, on a fresh
database per row. The reports are signed by ``--devices`` enrolled device keys before the
clock starts and all queued at once (devices flushing their outboxes), so the table reads
what one replica's worker can take, not what a simulator can send. Rows, each against the
first in the same run:

- **per-report store** (the baseline: each report stored by its own registry call, as
  before ``Registry.add_telemetry_many``; the checks outside the transaction as now);
- **batched store** (the server as it is: a batch's telemetry in a few statements);
- **checks only** (``prepare`` alone over the same messages: the CPU ceiling of one worker
  whatever the database).

A PostgreSQL from ``EDGEFLEET_TEST_POSTGRES_URL`` or ``--postgres``, else a throwaway one
(``scripts/postgres-throwaway.sh``, ``fsync=off``: its rows are an upper bound).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from bench.replicas import new_database, postgres  # noqa: E402
from fleet_server.db import open_database, sqlite_url  # noqa: E402
from fleet_server.metrics import ServerMetrics  # noqa: E402
from fleet_server.mqtt_bridge import MqttBridge  # noqa: E402
from fleet_server.registry import Registry  # noqa: E402
from fleet_server.report_book import ReportBook  # noqa: E402
from fleet_server.report_ingest import ReportIngest  # noqa: E402
from fleet_server.telemetry_limits import TelemetryLimits  # noqa: E402
from model_bundles import keys as mb_keys  # noqa: E402
from ota.messages import LatencySummary, Telemetry  # noqa: E402
from ota.signed_report import ReportSigner  # noqa: E402
from ota.topics import DeviceTopics  # noqa: E402

Message = tuple[str, bytes]


def signed_messages(devices: int, reports: int) -> tuple[dict[str, str], list[Message]]:
    """Public keys by device and ``reports`` signed telemetry windows of each device,
    interleaved as a fleet sends them."""
    keys = {f"dev-{i:05d}": Ed25519PrivateKey.generate() for i in range(devices)}
    now = time.time()
    out: list[Message] = []
    for seq in range(1, reports + 1):
        for device, key in keys.items():
            report = Telemetry(device_id=device, seq=seq, ts=now, window_s=10.0, bundle=None,
                               delegate="cpu", inferences=100, errors=0,
                               total_inferences=100 * seq, total_errors=0,
                               latency_ms=LatencySummary(1.0, 2.0, 3.0))
            out.append((DeviceTopics(device).telemetry,
                        ReportSigner(key).sign(report.to_bytes())))
    return {d: mb_keys.public_key_pem(k) for d, k in keys.items()}, out


def _bridge(url: str, pems: dict[str, str]) -> tuple[MqttBridge, Registry]:
    db = open_database(url)
    registry = Registry(db)
    for device, pem in pems.items():
        registry.add_device(device_id=device, group="g", public_key=pem, mqtt_secret_hash="h")
    bridge = MqttBridge(registry=registry, bundle_path=lambda sha: Path("/nonexistent"),
                        host="127.0.0.1", port=1, password="bench",
                        report_book=ReportBook(db))
    return bridge, registry


def run(url: str, pems: dict[str, str], messages: list[Message], how: str) -> float:
    """Messages per second through one worker (``how``: per-report, batched, checks)."""
    bridge, registry = _bridge(url, pems)
    try:
        if how == "checks":
            start = time.perf_counter()
            for topic, payload in messages:
                bridge.prepare(topic, payload)
            return len(messages) / (time.perf_counter() - start)
        store: Callable[[list[Any]], list[Any]] = bridge.store
        if how == "per-report":
            def store(reports: list[Any]) -> list[Any]:
                return [bridge.store([r])[0] for r in reports]
        done: list[int] = []
        ingest = ReportIngest(prepare=bridge.prepare, store=store,
                              publish_ack=lambda topic, payload: None, prune=lambda: None,
                              limits=TelemetryLimits(queue_messages=len(messages)),
                              metrics=ServerMetrics(),
                              batch_transaction=bridge._batch_transaction,  # noqa: SLF001
                              warm=bridge.warm)
        for topic, payload in messages:
            ingest.offer(topic, payload, lambda: done.append(1))
        start = time.perf_counter()
        ingest.start()
        while len(done) < len(messages):
            time.sleep(0.005)
        elapsed = time.perf_counter() - start
        ingest.stop(drain_s=0)
        stored = registry._db.count("telemetry")  # noqa: SLF001
        if stored != len(messages):
            raise SystemExit(f"{how}: {stored} of {len(messages)} reports stored")
        return len(messages) / elapsed
    finally:
        registry.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--reports", type=int, default=10, help="telemetry windows per device")
    parser.add_argument("--postgres", default=os.environ.get("EDGEFLEET_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    if args.postgres:
        os.environ["EDGEFLEET_TEST_POSTGRES_URL"] = args.postgres
    pems, messages = signed_messages(args.devices, args.reports)
    rows: list[tuple[str, str, float]] = []
    with postgres() as server, tempfile.TemporaryDirectory() as tmp:
        for engine in ("postgresql", "sqlite"):
            for how in ("per-report", "batched", "checks"):
                url = (new_database(server) if engine == "postgresql" else
                       sqlite_url(Path(tmp) / f"{how}.db"))
                rows.append((engine, how, run(url, pems, messages, how)))
    print(f"\n{len(messages):,} signed telemetry reports from {args.devices:,} devices, one "
          f"ingest worker; load average {os.getloadavg()[0]:.1f}")
    print("| database | store | reports/s | ratio to per-report |")
    print("|---|---|---:|---:|")
    for engine, how, rate in rows:
        base = next(r for e, h, r in rows if e == engine and h == "per-report")
        print(f"| {engine} | {how} | {rate:,.0f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
