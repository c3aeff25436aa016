"""The ingest worker commits a batch of reports together (``batch_transaction``) and
confirms them only once committed; a batch whose commit fails is stored one report at a
time. Real SQLite registry, the real ``ReportIngest`` worker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fleet_server.metrics import ServerMetrics
from fleet_server.registry import Registry
from fleet_server.report_ingest import ReportIngest
from fleet_server.telemetry_limits import TelemetryLimits
from ota.acks import ReportAck

DEVICES, REPORTS = 5, 40


class Harness:
    def __init__(self, tmp: Path, *, fail_commit: bool) -> None:
        self.registry = Registry(tmp / "registry.db")
        for i in range(DEVICES):
            self.registry.add_device(device_id=f"dev-{i}", group="g", public_key="",
                                     mqtt_secret_hash="x")
        self.fail_commit = fail_commit
        self.transactions = 0
        self.acks: dict[str, set[int]] = {}
        self.done: list[tuple[str, int, int]] = []  # (device, seq, rows stored at the time)
        self.ingest = ReportIngest(prepare=self.prepare, store=self.store, publish_ack=self.ack,
                                   prune=lambda: None, limits=TelemetryLimits(),
                                   metrics=ServerMetrics(), batch_transaction=self.batch)

    @contextmanager
    def batch(self) -> Iterator[None]:
        self.transactions += 1
        with self.registry.lock, self.registry.transaction():
            yield
            if self.fail_commit:
                self.fail_commit = False  # the next try goes through
                raise RuntimeError("commit failed")  # rolls the transaction back

    def prepare(self, topic: str, payload: bytes) -> dict[str, Any]:
        return dict(json.loads(payload))

    def store(self, reports: list[dict[str, Any]]) -> list[tuple[str, int] | None]:
        self.registry.add_telemetry_many([(r["device_id"], r["seq"], 1.0, r) for r in reports])
        return [(r["device_id"], r["seq"]) for r in reports]

    def ack(self, topic: str, payload: bytes) -> None:
        ack = ReportAck.from_bytes(payload)
        self.acks.setdefault(ack.device_id, set()).update(ack.seqs)

    def stored(self) -> int:
        return sum(self.registry.count_reports(table="telemetry", device_id=f"dev-{i}")
                   for i in range(DEVICES))

    def run(self) -> None:
        for k in range(REPORTS):  # all queued before the worker starts: one batch
            device, seq = f"dev-{k % DEVICES}", 1 + k // DEVICES
            body: dict[str, Any] = {"device_id": device, "seq": seq}
            self.ingest.offer(f"edgefleet/v1/devices/{device}/telemetry",
                              json.dumps(body).encode(),
                              lambda d=device, s=seq: self.done.append((d, s, self.stored())))
        self.ingest.start()
        self.ingest.stop(drain_s=10)


@pytest.mark.parametrize("fail_commit", [False, True], ids=["commits", "commit-fails"])
def test_ingest_batch_is_stored_once_and_confirmed_after_its_commit(
        tmp_path: Path, fail_commit: bool) -> None:
    h = Harness(tmp_path, fail_commit=fail_commit)
    h.run()
    assert h.stored() == REPORTS  # every report once, none lost with the failed commit
    want = {f"dev-{i}": set(range(1, REPORTS // DEVICES + 1)) for i in range(DEVICES)}
    assert h.acks == want
    assert sorted((d, s) for d, s, _ in h.done) == sorted(
        (d, s) for d, seqs in want.items() for s in seqs)  # each message confirmed once
    if fail_commit:  # the failed slice stored again one by one, then confirmed
        assert h.transactions == 1
        assert all(rows == REPORTS for *_, rows in h.done)
    else:  # confirmed only after the commit of what they were stored in
        assert 1 <= h.transactions < REPORTS
        assert all(rows >= k + 1 for k, (*_, rows) in enumerate(h.done))


def test_recording_a_sent_bundle_during_an_ingest_batch_does_not_deadlock(
        tmp_path: Path) -> None:
    """A thread recording a sent bundle (the publish after a deployment's commit) waits for
    the database while the ingest worker's batch transaction holds it; the worker then asks
    the report book (``was_sent``) inside that transaction. The book must not hold its lock
    while it waits for the database, or neither thread goes on (until SQLite's 30 s busy
    timeout fails one of them with "database is locked")."""
    import threading

    from fleet_server.db import open_database
    from fleet_server.report_book import ReportBook

    db = open_database(tmp_path / "registry.db")
    registry, book = Registry(db), ReportBook(db)
    registry.add_device(device_id="dev-0", group="g", public_key="", mqtt_secret_hash="x")
    in_batch, recorded = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def publisher() -> None:
        in_batch.wait(10)
        try:
            book.record_sent([("dev-0", "b" * 64)])
            recorded.set()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    thread = threading.Thread(target=publisher)
    thread.start()
    with registry.lock, registry.transaction():  # what the ingest worker's slice holds
        registry.add_telemetry(device_id="dev-0", seq=1, ts=1.0, data={"seq": 1})
        in_batch.set()
        recorded.wait(0.3)  # the publisher is now waiting for the database
        assert not book.was_sent(device_id="dev-0", sha256="b" * 64)
    thread.join(20)
    assert not thread.is_alive() and not errors, errors
    assert book.was_sent(device_id="dev-0", sha256="b" * 64)
    assert registry.count_reports(table="telemetry", device_id="dev-0") == 1
