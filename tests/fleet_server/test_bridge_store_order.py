"""The ingest worker's store writes a slice's reports device by device (each device's in the
order they came) and answers in the slice's order: replicas storing reports of the same
devices then lock their rows in one order (PostgreSQL deadlocks between them stay rare).
A real ``MqttBridge`` on a real SQLite registry."""

from __future__ import annotations

import time
from pathlib import Path

from fleet_server.db import open_database
from fleet_server.mqtt_bridge import MqttBridge
from fleet_server.registry import Registry
from fleet_server.report_book import ReportBook
from ota.messages import DeviceState, LatencySummary, Telemetry


def _state(device: str, seq: int, version: str) -> DeviceState:
    return DeviceState(device_id=device, status="online", ts=time.time(),
                       agent_version=version, applied_seq=0, seq=seq)


def _telemetry(device: str, seq: int) -> Telemetry:
    return Telemetry(device_id=device, seq=seq, ts=time.time(), window_s=10.0, bundle=None,
                     delegate="cpu", inferences=1, errors=0, total_inferences=seq,
                     total_errors=0, latency_ms=LatencySummary(1.0, 2.0, 3.0))


def test_a_slice_is_written_device_by_device_and_answered_in_its_order(
        tmp_path: Path) -> None:
    db = open_database(tmp_path / "registry.db")
    registry = Registry(db)
    for device in ("dev-a", "dev-b"):
        registry.add_device(device_id=device, group="g", public_key="pem",
                            mqtt_secret_hash="h")
    bridge = MqttBridge(registry=registry, bundle_path=lambda sha: tmp_path / "none",
                        host="127.0.0.1", port=1, password="p", report_book=ReportBook(db))
    written: list[tuple[str, int]] = []
    store_one = bridge._store_one  # noqa: SLF001 - the write we watch

    def watched(report: DeviceState) -> None:
        written.append((report.device_id, report.seq))
        store_one(report)
    bridge._store_one = watched  # type: ignore[method-assign]  # noqa: SLF001
    reports = [_state("dev-b", 5, "b-first"), _telemetry("dev-a", 1), _state("dev-a", 7, "a"),
               _telemetry("dev-b", 2), _state("dev-b", 6, "b-last")]
    with registry.report_batch():
        keys = bridge.store(reports)  # type: ignore[arg-type]
    assert written == [("dev-a", 7), ("dev-b", 5), ("dev-b", 6)]
    assert keys == [None, ("dev-a", 1), None, ("dev-b", 2), None]
    assert registry.get_device(device_id="dev-b")["state"]["agent_version"] == "b-last"
    assert [r["seq"] for r in registry.list_telemetry(device_id="dev-a")] == [1]
    assert registry.get_device(device_id="dev-b")["telemetry_summary"]["seq"] == 2
    registry.close()
