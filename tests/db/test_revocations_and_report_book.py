"""Revocations and the signed-report book in the registry database, on both engines: two
servers on one database (each its own engine, as two replicas) see each other's
revocations and bookkeeping; the files of a server from before (``DATA/ca/revoked.json``,
``DATA/report_book.db``) are imported once, merged with what the database holds, and a
malformed one is refused with nothing changed."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from fleet_server.db import Database
from fleet_server.errors import FleetError
from fleet_server.report_book import ReportBook
from fleet_server.revocations import RevocationList


def test_two_servers_on_one_database_share_revocations_and_the_report_book(
        db: Database) -> None:
    here, there = RevocationList(db), RevocationList(db.url, refresh_s=0.0)
    stale = RevocationList(db.url, refresh_s=3600.0)
    book_here, book_there = ReportBook(db), ReportBook(db.url)
    try:
        assert not stale.is_revoked("dev-1")  # its copy is loaded now
        entry, new = here.revoke(device_id="dev-1", key_fingerprint="fp-1", revoked_by="ops")
        assert new and there.is_revoked("dev-1") and there.get("dev-1") == entry
        assert there.key_revoked("fp-1") == entry
        # a copy younger than refresh_s is used as it is; key checks always read the table
        assert not stale.is_revoked("dev-1") and stale.key_revoked("fp-1") == entry
        # revoking again, from the other server, changes nothing
        again, new = there.revoke(device_id="dev-1", key_fingerprint="fp-other",
                                  revoked_by="someone-else")
        assert not new and again == entry and [r.device_id for r in here.all()] == ["dev-1"]

        assert not book_there.has_sent()
        book_here.record_sent([("dev-1", "a" * 64), ("dev-1", "b" * 64)])
        book_here.record_sent([("dev-1", "a" * 64)])  # known: kept as it is
        assert book_there.has_sent() and book_there.was_sent(device_id="dev-1", sha256="a" * 64)
        assert not book_there.was_sent(device_id="dev-2", sha256="a" * 64)
        assert db.count("report_sent_bundles") == 2
        book_here.set_state_seq(device_id="dev-1", seq=5)
        book_there.set_state_seq(device_id="dev-1", seq=3)  # older: the newer one stays
        assert book_here.state_seq(device_id="dev-1") == 5
        book_there.set_state_seq(device_id="dev-1", seq=7)
        assert book_here.state_seq(device_id="dev-1") == 7
        assert book_here.state_seq(device_id="dev-2") == -1
    finally:
        for closable in (here, there, stale, book_here, book_there):
            closable.close()


def _legacy_files(data: Path) -> None:
    """What a server before the shared tables left in its data directory."""
    (data / "ca").mkdir(parents=True)
    (data / "ca" / "revoked.json").write_text(json.dumps({"devices": [
        {"device_id": "old-1", "key_fingerprint": "fp-old", "revoked_at": 1.0,
         "revoked_by": "ops"},
        {"device_id": "both", "key_fingerprint": None, "revoked_at": 2.0,
         "revoked_by": "file"}]}))
    old = sqlite3.connect(data / "report_book.db")
    with old:
        old.execute("CREATE TABLE report_sent_bundles (device_id TEXT NOT NULL, sha256 TEXT "
                    "NOT NULL, first_sent_at REAL, PRIMARY KEY (device_id, sha256))")
        old.execute("CREATE TABLE report_state_seqs (device_id TEXT PRIMARY KEY, seq INTEGER "
                    "NOT NULL)")
        old.executemany("INSERT INTO report_sent_bundles VALUES (?, ?, ?)",
                        [("old-1", "c" * 64, 1.0), ("dev-1", "a" * 64, 1.0)])
        old.executemany("INSERT INTO report_state_seqs VALUES (?, ?)",
                        [("old-1", 9), ("dev-1", 2)])
    old.close()


def test_files_of_a_server_from_before_are_imported_once_and_merged(
        db: Database, tmp_path: Path) -> None:
    data = tmp_path / "data"
    _legacy_files(data)
    revocations, book = RevocationList(db), ReportBook(db)
    try:  # what the database already holds (another server's) is kept
        revocations.revoke(device_id="both", key_fingerprint=None, revoked_by="database")
        book.record_sent([("dev-1", "a" * 64)])
        book.set_state_seq(device_id="dev-1", seq=4)

        assert revocations.import_legacy(data) == 1
        assert book.import_legacy(data) == 4
        assert [(r.device_id, r.revoked_by) for r in revocations.all()] == [
            ("old-1", "ops"), ("both", "database")]
        assert revocations.key_revoked("fp-old") is not None
        assert book.was_sent(device_id="old-1", sha256="c" * 64)
        assert db.count("report_sent_bundles") == 2
        assert book.state_seq(device_id="old-1") == 9
        assert book.state_seq(device_id="dev-1") == 4  # the newer of the two
        assert sorted(p.name for p in data.rglob("*") if p.is_file()) == [
            "report_book.db.imported", "revoked.json.imported"]
        # once: a second start finds nothing to import
        assert revocations.import_legacy(data) == 0 and book.import_legacy(data) == 0
        assert len(revocations.all()) == 2 and db.count("report_state_seqs") == 2
    finally:
        revocations.close()
        book.close()


def test_a_malformed_legacy_file_is_refused_and_nothing_changes(
        db: Database, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "ca").mkdir(parents=True)
    (data / "ca" / "revoked.json").write_text('{"devices": [{"device_id": "x"}]}')
    (data / "report_book.db").write_bytes(b"not a database, just bytes" * 40)
    revocations, book = RevocationList(db), ReportBook(db)
    try:
        with pytest.raises(FleetError, match="cannot import the revocation list"):
            revocations.import_legacy(data)
        with pytest.raises(FleetError, match="cannot import the report book"):
            book.import_legacy(data)
        assert revocations.all() == [] and not book.has_sent()
        assert (data / "ca" / "revoked.json").exists() and (data / "report_book.db").exists()
    finally:
        revocations.close()
        book.close()
