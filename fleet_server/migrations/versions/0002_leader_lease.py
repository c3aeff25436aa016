"""Replicas: the leader lease (with its fencing epoch) and the log of signed instructions.

- ``leases (name, holder, epoch, expires_at, acquired_at)``: one row per lease
  (``fleet_server.leader``); ``epoch`` grows by one at every change of holder and is the
  fencing token every write of the leader checks in its own transaction.
- ``instruction_log (device_id, seq, envelope_sha256, issued_at)``: one row per
  signed instruction; its key refuses a second instruction for a device's seq, so no
  device can be sent two different instructions under one seq, whichever replica signs.

Revision ID: 0002_leader_lease
Revises: 0001_baseline
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_leader_lease"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Both tables only if missing, as the baseline's (a schema stamped down is adopted)."""
    c = sa.Column
    op.create_table("leases", c("name", sa.Text, nullable=False),
                    c("holder", sa.Text, nullable=False), c("epoch", sa.BigInteger,
                                                            nullable=False),
                    c("expires_at", sa.Float, nullable=False), c("acquired_at", sa.Float),
                    sa.PrimaryKeyConstraint("name", name="pk_leases"), if_not_exists=True)
    op.create_table("instruction_log", c("device_id", sa.Text, nullable=False),
                    c("seq", sa.BigInteger, nullable=False),
                    c("envelope_sha256", sa.Text, nullable=False), c("issued_at", sa.Float),
                    sa.PrimaryKeyConstraint("device_id", "seq", name="pk_instruction_log"),
                    if_not_exists=True)


def downgrade() -> None:
    op.drop_table("instruction_log")
    op.drop_table("leases")
