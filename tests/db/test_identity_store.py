"""People, API tokens and the audit log on both engines (``db``: SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from fleet_server.audit import AuditLog, from_client
from fleet_server.db import Database
from fleet_server.errors import ConflictError, NotFoundError
from fleet_server.roles import Role
from fleet_server.users import IdentityStore


def test_users_are_added_once_and_authenticate_until_disabled(db: Database) -> None:
    people = IdentityStore(db)
    people.add_user(username="alice", password="correct horse battery", role="operator",
                    created_by="admin")
    with pytest.raises(ConflictError):
        people.add_user(username="alice", password="another long password", role="viewer",
                        created_by="admin")
    assert people.authenticate(username="alice", password="wrong password!!") is None
    who = people.authenticate(username="alice", password="correct horse battery")
    assert who is not None and who.role is Role.OPERATOR
    assert people.get_user(username="alice")["last_login_at"] is not None
    people.update_user(username="alice", disabled=True)
    assert people.authenticate(username="alice", password="correct horse battery") is None
    assert [u["username"] for u in people.list_users()] == ["alice"]
    with pytest.raises(NotFoundError):
        people.update_user(username="bob", role="admin")


def test_a_revoked_or_expired_token_is_refused(db: Database) -> None:
    people = IdentityStore(db)
    secret, row = people.create_token(name="ci", role="publisher", ttl_s=3600,
                                      created_by="admin")
    assert secret not in repr(db.rows("SELECT * FROM api_tokens"))
    who = people.token_principal(secret)
    assert who is not None and who.name == "token:ci"
    assert people.get_token(token_id=row["id"])["last_used_at"] is not None
    assert people.token_principal(secret, now=row["expires_at"] + 1) is None
    people.revoke_token(token_id=row["id"])
    assert people.token_principal(secret) is None
    assert [t["revoked_at"] is not None for t in people.list_tokens()] == [True]


def test_audit_rows_page_newest_first_with_filters_and_client(db: Database) -> None:
    log = AuditLog(db)
    for i in range(5):
        with from_client(f"10.0.0.{i}"):
            log.record(actor="alice" if i % 2 else "bob", action="device.revoke",
                       subject=f"dev-{i}", detail={"i": i})
    page = log.list(limit=2)
    assert [(r["subject"], r["client"]) for r in page] == [("dev-4", "10.0.0.4"),
                                                           ("dev-3", "10.0.0.3")]
    assert [r["subject"] for r in log.list(before=page[-1]["id"])] == ["dev-2", "dev-1", "dev-0"]
    assert [r["detail"] for r in log.list(actor="alice")] == [{"i": 3}, {"i": 1}]
    log.record(actor="x", action="big", subject="s", detail={"blob": "y" * 10_000})
    assert "truncated" in log.list(action="big")[0]["detail"]
