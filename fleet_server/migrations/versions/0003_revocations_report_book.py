"""Revocations and the signed-report book move into the registry database, so every server
sharing it (replicas on one PostgreSQL) sees the same revoked devices and the same
bookkeeping.

- ``revocations (device_id, key_fingerprint, revoked_at, revoked_by)``: one row per revoked
  device, never removed (``fleet_server.revocations``); was ``DATA/ca/revoked.json``.
- ``report_sent_bundles (device_id, sha256, first_sent_at)`` and
  ``report_state_seqs (device_id, seq)`` (``fleet_server.report_book``): were the two
  tables of ``DATA/report_book.db``.

The old files live in a data directory this migration does not see (it runs on a
connection alone, and a new PostgreSQL database gets the whole schema without any
upgrade): each server imports its data directory's files once at start
(``RevocationList.import_legacy``, ``ReportBook.import_legacy``) and renames them
``*.imported``.

Revision ID: 0003_revocations_report_book
Revises: 0002_leader_lease
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_revocations_report_book"
down_revision = "0002_leader_lease"
branch_labels = None
depends_on = None


def upgrade() -> None:
    c = sa.Column
    op.create_table("revocations", c("device_id", sa.Text, nullable=False),
                    c("key_fingerprint", sa.Text), c("revoked_at", sa.Float, nullable=False),
                    c("revoked_by", sa.Text, nullable=False),
                    sa.PrimaryKeyConstraint("device_id", name="pk_revocations"),
                    if_not_exists=True)
    op.create_index("idx_revocations_key_fingerprint", "revocations", ["key_fingerprint"],
                    if_not_exists=True)
    op.create_table("report_sent_bundles", c("device_id", sa.Text, nullable=False),
                    c("sha256", sa.Text, nullable=False), c("first_sent_at", sa.Float),
                    sa.PrimaryKeyConstraint("device_id", "sha256",
                                            name="pk_report_sent_bundles"),
                    if_not_exists=True)
    op.create_table("report_state_seqs", c("device_id", sa.Text, nullable=False),
                    c("seq", sa.BigInteger, nullable=False),
                    sa.PrimaryKeyConstraint("device_id", name="pk_report_state_seqs"),
                    if_not_exists=True)


def downgrade() -> None:
    op.drop_table("report_state_seqs")
    op.drop_table("report_sent_bundles")
    op.drop_index("idx_revocations_key_fingerprint", table_name="revocations")
    op.drop_table("revocations")
