"""An index on ``deployment_targets (device_id, instruction_seq)``.

Every install state a device reports is matched to its deployment target by device and
instruction seq (``Registry.update_target_state``); the table's key is
``(deployment_id, device_id)``, so without this index each report scanned the whole table:
10,000 rows per report in a 10,000-device fleet after one deployment, 10,000 more with each
rollout stage (docs/scaling.md, "10,000 devices").

Revision ID: 0004_target_seq_index
Revises: 0003_revocations_report_book
"""

from __future__ import annotations

from alembic import op

revision = "0004_target_seq_index"
down_revision = "0003_revocations_report_book"
branch_labels = None
depends_on = None

INDEX = "idx_deployment_targets_device_id_instruction_seq"


def upgrade() -> None:
    op.create_index(INDEX, "deployment_targets", ["device_id", "instruction_seq"],
                    if_not_exists=True)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="deployment_targets")
