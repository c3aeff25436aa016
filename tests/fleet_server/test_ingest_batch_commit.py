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
from fleet_server.report_ingest import BATCH, AckBatcher, ReportIngest
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
        self.ack_messages = 0
        self.done: list[tuple[str, int, int]] = []  # (device, seq, rows stored at the time)
        self.ingest = ReportIngest(prepare=self.prepare, store=self.store, publish_ack=self.ack,
                                   prune=lambda: None,
                                   limits=TelemetryLimits(queue_messages=4 * BATCH),
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
        self.ack_messages += 1
        self.acks.setdefault(ack.device_id, set()).update(ack.seqs)

    def stored(self) -> int:
        return sum(self.registry.count_reports(table="telemetry", device_id=f"dev-{i}")
                   for i in range(DEVICES))

    def run(self, reports: int = REPORTS) -> None:
        for k in range(reports):  # all queued before the worker starts
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


def test_a_backlog_is_confirmed_with_a_few_acks_naming_many_seqs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four batches queued at once (outboxes flushing): the store thread confirms what it
    stored once nothing more is queued (or ACK_DELAY_S later), so each device gets one or
    two ``ReportAck``s naming its seqs instead of one per batch."""
    monkeypatch.setattr("fleet_server.report_ingest.ACK_DELAY_S", 30.0)
    h = Harness(tmp_path, fail_commit=False)
    reports = 4 * BATCH
    h.run(reports)
    assert h.stored() == reports
    want: dict[str, set[int]] = {}
    for k in range(reports):  # as run() sends them
        want.setdefault(f"dev-{k % DEVICES}", set()).add(1 + k // DEVICES)
    assert h.acks == want
    assert DEVICES <= h.ack_messages <= 2 * DEVICES < 4 * DEVICES
    assert len(h.done) == reports  # every MQTT message acknowledged once committed


def test_ack_batcher_confirms_at_most_ack_delay_after_the_first_stored_seq() -> None:
    from fleet_server.report_ingest import ACK_DELAY_S

    now = [0.0]
    sent: list[ReportAck] = []
    acks = AckBatcher(lambda topic, payload: sent.append(ReportAck.from_bytes(payload)),
                      ServerMetrics(), clock=lambda: now[0])
    assert not acks and not acks.due()
    acks.add([("dev-0", 3), ("dev-1", 1)])
    now[0] += ACK_DELAY_S / 2
    acks.add([("dev-0", 2)])
    assert acks and not acks.due()
    now[0] += ACK_DELAY_S / 2
    assert acks.due()
    acks.flush()
    assert sorted((a.device_id, a.seqs) for a in sent) == [("dev-0", (2, 3)), ("dev-1", (1,))]
    assert not acks and not acks.due()
    acks.flush()  # nothing stored since: nothing sent
    assert len(sent) == 2


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
