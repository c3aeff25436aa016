"""Registry functions on both engines (the ``db`` fixture: a real SQLite file, a real
PostgreSQL database)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_server.db import Database
from fleet_server.errors import ConflictError, NotFoundError
from fleet_server.registry import Registry, hash_secret


@pytest.fixture()
def registry(db: Database) -> Registry:
    reg = Registry(db)
    reg.add_device(device_id="dev-1", group="lab", public_key="pem",
                   mqtt_secret_hash=hash_secret("s"))
    return reg


def _everything_stored(db: Database) -> str:
    """Every value of every row of every table, as text."""
    tables = [r[0] for r in db.tuples(
        "SELECT name FROM sqlite_master WHERE type = 'table'" if db.dialect == "sqlite" else
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    return repr([db.rows(f"SELECT * FROM {t}") for t in tables])  # noqa: S608 - catalogue names


def test_telemetry_is_stored_once_per_device_and_seq(registry: Registry) -> None:
    report = {"seq": 5, "inferences": 3}
    assert registry.add_telemetry(device_id="dev-1", seq=5, ts=1.0, data=report) is True
    assert registry.add_telemetry(device_id="dev-1", seq=5, ts=1.0, data=report) is False
    rows = registry.list_telemetry(device_id="dev-1")
    assert [r["seq"] for r in rows] == [5]
    assert registry.get_device(device_id="dev-1")["telemetry_summary"] == report


def test_a_batch_of_telemetry_stores_each_new_report_once_and_says_which(
        registry: Registry) -> None:
    """The ingest worker's path: one call for a batch mixing new reports, a seq stored
    before, one pruned away, a copy inside the batch and an unknown device."""
    registry.add_device(device_id="dev-2", group="lab", public_key="pem",
                        mqtt_secret_hash=hash_secret("s"))
    assert registry.add_telemetry(device_id="dev-1", seq=3, ts=1.0, data={"n": 3})
    for seq in (1, 2):
        registry.add_telemetry(device_id="dev-2", seq=seq, ts=1.0, data={"n": seq})
    assert registry.prune_reports(table="telemetry", keep_rows=1, older_than=0.0) == 1
    batch = [("dev-1", 4, 2.0, {"n": 4}), ("dev-1", 3, 2.0, {"n": 33}),  # 3: stored
             ("dev-2", 1, 2.0, {"n": 11}),  # pruned: below dev-2's floor
             ("dev-2", 5, 2.0, {"n": 5}), ("ghost", 1, 2.0, {"n": 1}),
             ("dev-1", 4, 2.0, {"n": 44}),  # a second copy in the batch
             ("dev-1", 6, 2.0, {"n": 6})]
    assert registry.add_telemetry_many(batch) == [True, False, False, True, False, False, True]
    assert [r["data"]["n"] for r in registry.list_telemetry(device_id="dev-1")] == [6, 4, 3]
    assert [r["seq"] for r in registry.list_telemetry(device_id="dev-2")] == [5, 2]
    assert registry.list_telemetry(device_id="ghost") == []
    assert registry.get_device(device_id="dev-1")["telemetry_summary"] == {"n": 6}
    assert registry.get_device(device_id="dev-2")["telemetry_summary"] == {"n": 5}
    assert registry.add_telemetry_many(batch) == [False] * len(batch)  # nothing new twice


def test_a_report_batch_writes_each_devices_summary_once_at_its_end(
        registry: Registry) -> None:
    """The ingest worker's transaction: the summaries wait for the end of the batch (the
    rows of ``devices`` are locked only by its last statement), the newest seq wins whatever
    the order the reports came in, and a batch that fails leaves nothing behind."""
    registry.add_device(device_id="dev-2", group="lab", public_key="pem",
                        mqtt_secret_hash=hash_secret("s"))
    with registry.report_batch():
        assert registry.add_telemetry_many([("dev-1", 5, 1.0, {"n": 5})]) == [True]
        with registry.report_batch():  # nested: joins the outer batch
            assert registry.add_telemetry_many([("dev-1", 4, 1.0, {"n": 4}),
                                                ("dev-2", 1, 1.0, {"n": 1})]) == [True, True]
        assert registry.get_device(device_id="dev-1")["telemetry_summary"] is None
    assert registry.get_device(device_id="dev-1")["telemetry_summary"] == {"n": 5}
    assert registry.get_device(device_id="dev-2")["telemetry_summary"] == {"n": 1}
    assert registry.get_device(device_id="dev-2")["last_seen"] is not None
    with pytest.raises(RuntimeError), registry.report_batch():
        registry.add_telemetry_many([("dev-2", 2, 1.0, {"n": 2})])
        raise RuntimeError("the commit never comes")
    assert registry.get_device(device_id="dev-2")["telemetry_summary"] == {"n": 1}
    assert [r["seq"] for r in registry.list_telemetry(device_id="dev-2")] == [1]


def test_public_keys_of_many_devices_in_one_call(registry: Registry,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fleet_server.registry.KEY_QUERY_IDS", 2)  # two queries for three
    for i in range(3):
        registry.add_device(device_id=f"k-{i}", group="lab", public_key=f"pem-{i}",
                            mqtt_secret_hash=hash_secret("s"))
    assert registry.public_keys(device_ids=["k-0", "k-2", "ghost"]) == {
        "k-0": "pem-0", "k-2": "pem-2"}
    assert registry.public_keys(device_ids=["k-0", "k-1", "k-2"]) == {
        "k-0": "pem-0", "k-1": "pem-1", "k-2": "pem-2"}
    assert registry.public_keys(device_ids=[]) == {}


def test_telemetry_from_unknown_device_is_not_stored(registry: Registry) -> None:
    assert registry.add_telemetry(device_id="ghost", seq=1, ts=1.0, data={}) is False
    assert registry.list_telemetry(device_id="ghost") == []


def test_enrolment_token_is_one_time_and_expires(registry: Registry) -> None:
    registry.add_enrolment_token(token="tok-aaaaaaaa", group="lab", expires_at=100.0)
    assert registry.consume_enrolment_token(token="tok-aaaaaaaa", now=50.0) == "lab"
    assert registry.consume_enrolment_token(token="tok-aaaaaaaa", now=50.0) is None
    registry.add_enrolment_token(token="tok-bbbbbbbb", group="lab", expires_at=100.0)
    assert registry.consume_enrolment_token(token="tok-bbbbbbbb", now=100.0) is None


def test_enrolment_tokens_are_stored_only_as_hashes(registry: Registry, db: Database,
                                                    tmp_path: Path) -> None:
    registry.add_enrolment_token(token="plain-secret-token", group="lab", expires_at=1e12)
    stored = _everything_stored(db)
    assert hash_secret("plain-secret-token") in stored and "plain-secret-token" not in stored
    if db.dialect == "sqlite":
        db.close()
        assert b"plain-secret-token" not in (tmp_path / "registry.db").read_bytes()


def test_same_ref_with_other_bytes_conflicts_and_leaves_first(registry: Registry) -> None:
    common = dict(name="digits", version="1.0.0", size=10, publisher_key_id="k",
                  manifest={"name": "digits"}, chunk_size=4, chunk_hashes=["h"])
    row, created = registry.add_bundle(sha256="a" * 64, **common)
    assert created and row["ref"] == "digits@1.0.0"
    again, created_again = registry.add_bundle(sha256="a" * 64, **common)
    assert not created_again and again["id"] == "a" * 64
    with pytest.raises(ConflictError):
        registry.add_bundle(sha256="b" * 64, **common)
    assert [b["id"] for b in registry.list_bundles()] == ["a" * 64]
    assert registry.find_bundle(key="digits@1.0.0")["chunk_hashes"] == ["h"]


def test_reenrolling_a_device_conflicts(registry: Registry) -> None:
    with pytest.raises(ConflictError):
        registry.add_device(device_id="dev-1", group="x", public_key="p", mqtt_secret_hash="h")
    assert registry.get_device(device_id="dev-1")["group_name"] == "lab"


def test_instruction_seq_increases_and_target_state_follows_reports(registry: Registry) -> None:
    assert registry.issue_seq(device_id="dev-1", sha256="a" * 64, deployment_id="dep-1") == 1
    assert registry.issue_seq(device_id="dev-1", sha256="a" * 64, deployment_id="dep-1") == 2
    registry.add_deployment(deployment_id="dep-1", bundle_ref="d@1.0.0", bundle_id="a" * 64,
                            target_kind="device", target_value="dev-1", created_by="admin")
    registry.add_deployment_target(deployment_id="dep-1", device_id="dev-1", instruction_seq=2)
    assert registry.update_target_state(device_id="dev-1", instruction_seq=2,
                                        state="committed", error=None)
    target = registry.get_deployment(deployment_id="dep-1")["targets"][0]
    assert (target["state"], target["instruction_seq"]) == ("committed", 2)
    assert registry.get_device(device_id="dev-1")["desired_sha"] == "a" * 64


def test_unknown_lookups_raise_not_found(registry: Registry) -> None:
    with pytest.raises(NotFoundError):
        registry.find_bundle(key="nope@1.0.0")
    with pytest.raises(NotFoundError):
        registry.get_deployment(deployment_id="dep-9")
    with pytest.raises(NotFoundError):
        registry.get_device(device_id="ghost")


def test_deployment_ids_count_up_and_survive_a_reopen(registry: Registry, db: Database) -> None:
    assert [registry.next_deployment_id() for _ in range(3)] == ["dep-1", "dep-2", "dep-3"]
    again = Registry(db.url)  # a second connection pool on the same database
    try:
        assert again.next_deployment_id() == "dep-4"
    finally:
        again.close()


def test_device_state_and_envelopes_round_trip(registry: Registry) -> None:
    registry.update_device_state(device_id="dev-1", online=True, ts=5.0,
                                 state={"install": {"state": "committed"}},
                                 active_bundle="d@1.0.0", delegate="cpu")
    registry.update_device_state(device_id="ghost", online=True, ts=5.0, state={},
                                 active_bundle=None, delegate=None)  # unknown: ignored
    dev = registry.get_device(device_id="dev-1")
    assert (dev["online"], dev["state"], dev["active_bundle"]) == (
        True, {"install": {"state": "committed"}}, "d@1.0.0")
    assert not registry.device_exists(device_id="ghost")
    registry.set_desired_envelope(device_id="dev-1", envelope=b'{"payload": "x"}')
    assert registry.desired_envelopes() == [("dev-1", b'{"payload": "x"}')]


def test_a_resent_event_is_stored_once_and_retention_remembers_the_floor(
        registry: Registry) -> None:
    for seq in range(1, 6):
        assert registry.add_event(device_id="dev-1", seq=seq, ts=float(seq), kind="k",
                                  data={"n": seq})
        assert registry.add_telemetry(device_id="dev-1", seq=seq, ts=float(seq), data={})
    assert not registry.add_event(device_id="dev-1", seq=3, ts=3.0, kind="k", data={})
    assert registry.prune_reports(table="telemetry", keep_rows=2, older_than=0.0) == 3
    assert [r["seq"] for r in registry.list_telemetry(device_id="dev-1")] == [5, 4]
    # a report re-sent from below the pruned floor is not stored again
    assert not registry.add_telemetry(device_id="dev-1", seq=2, ts=2.0, data={})
    assert registry.prune_reports(table="events", keep_rows=10, older_than=2.5) == 2
    assert registry.count_reports(table="events", device_id="dev-1") == 3
    assert registry.prune_reports(table="telemetry", keep_rows=5, older_than=0.0) == 0
    assert not registry.add_telemetry(device_id="dev-1", seq=3, ts=3.0, data={})  # floor kept
    with pytest.raises(ValueError, match="no retention"):
        registry.prune_reports(table="devices", keep_rows=1, older_than=0.0)
    assert registry.count_reports(table="telemetry", device_id="dev-1") == 2
