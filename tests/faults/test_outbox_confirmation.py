"""The device outbox keeps a report until the server confirms its seq, across restarts."""

from __future__ import annotations

from pathlib import Path

from device_agent.outbox import Outbox


def test_report_stays_in_the_outbox_until_the_server_confirms_its_seq(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox")
    for key in (41, 42, 44):
        box.put("t/telemetry", f"report {key}".encode(), key=key)
    box.put("t/plain", b"no key")  # deleted on the broker's PUBACK (ack), as before
    assert sorted(p.name for p in (tmp_path / "outbox").glob("*.msg")) == [
        "00000000000000000001-41.msg", "00000000000000000002-42.msg",
        "00000000000000000003-44.msg", "00000000000000000004.msg"]
    assert box.confirm([42, 99]) == [2]  # an unknown seq confirms nothing
    box.ack(4)
    reopened = Outbox(tmp_path / "outbox")  # a restart: what is unconfirmed is still there
    assert [(r.seq, r.key, r.payload) for r in reopened.pending()] == [
        (1, 41, b"report 41"), (3, 44, b"report 44")]
    assert reopened.size_bytes == box.size_bytes
    assert reopened.confirm([41, 44]) == [1, 3]
    assert reopened.pending() == [] and len(reopened) == 0
    assert list((tmp_path / "outbox").glob("*.msg")) == []
    assert reopened.put("t/telemetry", b"next", key=45) == 4  # after the highest held at open


def test_outbox_over_budget_still_drops_the_oldest_keyed_record(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox", budget_bytes=30)
    for key in range(1, 5):
        box.put("t", b"x" * 8, key=key)  # 10 bytes per record
    assert [r.key for r in box.pending()] == [2, 3, 4]
    assert box.dropped == 1
    assert box.confirm([1]) == []  # a dropped record cannot be confirmed twice
