"""The schema's revisions on both engines: an empty database is brought to head, a schema
too new or too old is refused (by the stores, ``serve`` and ``db upgrade``) with both
revisions named and nothing changed, ``db upgrade`` adopts a registry made before versioned
migrations, and ``db migrate-from-sqlite`` copies a registry with every count checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from fleet_server import cli, schema
from fleet_server.audit import AuditLog
from fleet_server.db import Database, DatabaseError, open_database, sqlite_url
from fleet_server.registry import Registry
from fleet_server.rollout_store import RolloutStore

TABLES = {"alembic_version", "api_tokens", "audit", "bundles", "counters",
          "deployment_targets", "deployments", "devices", "enrolment_tokens", "events",
          "instruction_log", "leases", "publishers", "report_floors", "rollout_decisions", "rollout_devices",
          "rollout_gate_history", "rollouts", "shadow_reports", "telemetry", "users",
          "revocations", "report_sent_bundles", "report_state_seqs"}
FUTURE = "9999_from_a_newer_release"


def _tables(db: Database) -> set[str]:
    with db.engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def _stamp(db: Database, revision: str) -> None:
    db.run(f"UPDATE {schema.VERSION_TABLE} SET version_num = ?", [revision])  # noqa: S608 - a constant


def test_an_empty_database_is_upgraded_to_head_and_a_second_upgrade_changes_nothing(
        empty_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    db = Database(empty_url)
    try:
        assert schema.state(db).empty
        assert cli.main(["db", "status", "--db", empty_url]) == 1
        assert "no schema yet" in capsys.readouterr().out
        assert cli.main(["db", "upgrade", "--db", empty_url]) == 0
        assert f"from revision none to {schema.head()}" in capsys.readouterr().out
        assert _tables(db) == TABLES
        assert schema.state(db).current == schema.head()
        assert cli.main(["db", "upgrade", "--db", empty_url]) == 0
        assert f"already at revision {schema.head()}" in capsys.readouterr().out
        assert cli.main(["db", "status", "--db", empty_url]) == 0
    finally:
        db.close()


def test_a_newer_schema_is_refused_by_every_entry_and_left_alone(
        empty_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    open_database(empty_url).close()  # the schema, as a first start makes it
    db = Database(empty_url)
    try:
        _stamp(db, FUTURE)
        for opener in (Registry, RolloutStore, AuditLog):
            with pytest.raises(DatabaseError, match="too new") as refused:
                opener(empty_url)
            assert FUTURE in str(refused.value) and schema.head() in str(refused.value)
        assert cli.main(["db", "upgrade", "--db", empty_url]) == 1
        err = capsys.readouterr().err
        assert f"revision {FUTURE} is unknown to this fleet-server" in err
        assert schema.state(db).current == FUTURE and _tables(db) == TABLES
    finally:
        db.close()


def test_serve_refuses_a_newer_schema_naming_both_revisions(
        empty_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "fleet"
    url = empty_url
    if empty_url.startswith("sqlite"):  # the default: the data directory's own file
        data.mkdir()
        url = sqlite_url(data / "registry.db")
    open_database(url).close()
    db = Database(url)
    try:
        _stamp(db, FUTURE)
    finally:
        db.close()
    args = ["serve", "--data", str(data), "--port", "0", "--mqtt-port", "0"]
    if not empty_url.startswith("sqlite"):
        args += ["--db", url]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "the database schema is too new" in err
    assert FUTURE in err and f"whose newest is {schema.head()}" in err


def test_a_registry_from_before_migrations_is_refused_then_adopted_by_db_upgrade(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The tables a pre-migration server made on open (SQLite: there were no others),
    minus what came later (the gate history table, ``audit.client``): too old for the
    stores, kept whole by ``db upgrade``."""
    empty_url = sqlite_url(tmp_path / "registry.db")
    db = Database(empty_url)
    try:
        db.run("CREATE TABLE devices (id TEXT PRIMARY KEY, group_name TEXT, public_key TEXT, "
               "mqtt_secret_hash TEXT, enrolled_at FLOAT, online INTEGER, last_seen FLOAT, "
               "state TEXT, active_bundle TEXT, delegate TEXT, telemetry_summary TEXT, "
               "last_issued_seq INTEGER, desired_sha TEXT, desired_deployment TEXT, "
               "desired_envelope TEXT)")
        db.run("CREATE TABLE audit (id INTEGER PRIMARY KEY, ts FLOAT, actor TEXT, action TEXT, "
               "subject TEXT, detail TEXT)")
        db.run("INSERT INTO devices (id, group_name, last_issued_seq) VALUES ('old-1', 'lab', 4)")
        db.run("INSERT INTO audit (id, ts, actor, action, subject, detail) "
               "VALUES (1, 1.0, 'bob', 'x', 'y', '{}')")
        with pytest.raises(DatabaseError, match="too old: it has no revision") as refused:
            Registry(empty_url)
        assert "fleet-server db upgrade" in str(refused.value)
        assert _tables(db) == {"devices", "audit"}  # the refusal changed nothing
        assert cli.main(["db", "upgrade", "--db", empty_url]) == 0
        assert "from revision none" in capsys.readouterr().out
        assert _tables(db) == TABLES
        registry = Registry(empty_url)
        try:
            assert registry.issue_seq(device_id="old-1", sha256=None, deployment_id="d") == 5
        finally:
            registry.close()
        log = AuditLog(empty_url)
        try:
            log.record(actor="alice", action="a", subject="s", client="10.0.0.1")
            assert [(r["id"], r["client"]) for r in log.list()] == [(2, "10.0.0.1"), (1, None)]
        finally:
            log.close()
    finally:
        db.close()


def test_a_schema_without_its_revision_is_too_old_on_both_engines_until_db_upgrade(
        empty_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every table there but no revision recorded (as `alembic stamp base` leaves it): the
    stores and ``serve`` refuse it as too old; ``db upgrade`` adopts it, keeping its rows."""
    registry = Registry(empty_url)
    registry.add_device(device_id="dev-1", group="lab", public_key="", mqtt_secret_hash="h")
    registry.close()
    db = Database(empty_url)
    try:
        db.run(f"DELETE FROM {schema.VERSION_TABLE}")  # noqa: S608 - a constant
        with pytest.raises(DatabaseError, match="too old: it has no revision"):
            RolloutStore(empty_url)
        assert cli.main(["db", "status", "--db", empty_url]) == 1
        assert "too old" in capsys.readouterr().out
        assert cli.main(["db", "upgrade", "--db", empty_url]) == 0
        assert schema.state(db).current == schema.head()
        assert db.count("devices") == 1
    finally:
        db.close()


def test_an_older_revision_is_named_with_the_upgrade_to_run() -> None:
    older = schema.SchemaState(current=schema.head(), head="0099_later", has_tables=True)
    why = schema.problem(older, where="--data /srv/fleet")
    assert why is not None and why.startswith(
        f"the database schema is too old: revision {schema.head()}, this fleet-server needs "
        "revision 0099_later; run `fleet-server db upgrade --data /srv/fleet`")


def _filled_sqlite(path: Path) -> None:
    registry, store, log = Registry(path), RolloutStore(path), AuditLog(path)
    try:
        for i in range(3):
            registry.add_device(device_id=f"dev-{i}", group="lab", public_key="",
                                mqtt_secret_hash="h")
            for seq in range(1, 4):
                registry.add_telemetry(device_id=f"dev-{i}", seq=seq, ts=float(seq),
                                       data={"inferences": seq})
        registry.next_deployment_id()
        rid = store.next_rollout_id()
        store.add_rollout(rollout_id=rid, bundle_id="a" * 64, bundle_ref="m@1.0.0",
                          target_kind="group", target_value="lab", devices=["dev-0"],
                          plan={}, created_by="alice", now=1.0)
        store.add_decision(rollout_id=rid, ts=1.0, stage_index=0, stage="s", action="created",
                           actor="alice", reason="", data={})
        for i in range(4):
            log.record(actor="alice", action="device.add", subject=f"dev-{i}")
    finally:
        registry.close(), store.close(), log.close()


def test_migrate_from_sqlite_copies_every_row_checks_counts_and_ids_continue(
        empty_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "old" / "registry.db"
    source.parent.mkdir()
    _filled_sqlite(source)
    before = source.read_bytes()
    assert cli.main(["db", "migrate-from-sqlite", str(source), "--db", empty_url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tables"]["telemetry"] == 9 and report["tables"]["audit"] == 4
    target = Database(empty_url)
    src = Database(sqlite_url(source))
    try:
        for table, n in report["tables"].items():
            assert src.count(table) == n == target.count(table), table
        (data,) = target.first("SELECT data FROM telemetry WHERE device_id = 'dev-2' "
                               "AND seq = 3") or (None,)
        assert (json.loads(data) if isinstance(data, str) else data) == {"inferences": 3}
        log = AuditLog(target)
        log.record(actor="bob", action="after", subject="move")
        assert log.list(limit=1)[0]["id"] == 5  # the serial id continues after the copy
        assert Registry(target).next_deployment_id() == "dep-2"
        # a second copy into the now non-empty target is refused and changes nothing
        assert cli.main(["db", "migrate-from-sqlite", str(source), "--db", empty_url]) == 1
        assert "already holds rows" in capsys.readouterr().err
        assert target.count("audit") == 5
    finally:
        target.close(), src.close()
    assert source.read_bytes() == before  # the source was only read


def test_migrate_from_sqlite_refuses_a_source_at_another_revision(
        empty_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "old.db"
    open_database(source).close()
    src = Database(sqlite_url(source))
    _stamp(src, FUTURE)
    src.close()
    assert cli.main(["db", "migrate-from-sqlite", str(source), "--db", empty_url]) == 1
    assert f"at schema revision {FUTURE}" in capsys.readouterr().err
    target = Database(empty_url)
    try:
        assert schema.state(target).empty  # nothing was created
    finally:
        target.close()


def test_a_server_on_postgresql_keeps_its_registry_there_not_in_the_data_directory(
        postgres_databases: object, tmp_path: Path) -> None:
    """``serve --db postgresql://...`` end to end (one engine only: the stores are tested on
    both above): the first start gives the empty database the schema, the API's writes land
    in it, and the data directory holds no registry file."""
    import httpx

    from fleet_server.config import ServerSettings
    from fleet_server.serve import start_server

    url = postgres_databases()  # type: ignore[operator]
    settings = ServerSettings(data_dir=tmp_path / "fleet", port=0, mqtt_port=0, insecure=True,
                              db_url=url)
    with start_server(settings) as server:
        headers = {"Authorization": f"Bearer {server.admin_token}"}
        r = httpx.post(f"{server.http_url}/api/v1/enrolment-tokens", headers=headers,
                       json={"group": "lab", "ttl_s": 600}, timeout=10)
        assert r.status_code == 201, r.text
    db = Database(url)
    try:
        assert schema.state(db).current == schema.head()
        assert db.count("enrolment_tokens", "group_name = ?", ["lab"]) == 1
        assert db.count("audit", "action = ?", ["enrolment_token.create"]) == 1
    finally:
        db.close()
    assert not (tmp_path / "fleet" / "registry.db").exists()
