"""Baseline: the registry as fleet-server had it before versioned migrations.

Registry files made before Alembic (tables created on open by sqlite-utils) are adopted:
every table and index is created only if missing (same names as sqlite-utils gave them),
and ``audit.client``, the one column added to an existing table back then, is added if absent.

Revision ID: 0001_baseline
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

T, F, I, B = sa.Text, sa.Float, sa.Integer, sa.BigInteger  # noqa: E741 - column type shorthands
J = sa.Text().with_variant(postgresql.JSONB(), "postgresql")
"""JSON that queries read by path (device state, telemetry, shadow reports): ``jsonb`` on
PostgreSQL, parsed once at insert instead of at every query; text on SQLite. JSON that is
only stored and shown (manifests, plans, audit details) stays text on both, byte for byte."""


def _table(name: str, *columns: sa.Column, pk: tuple[str, ...] = ()) -> None:
    args: list = list(columns)
    if pk:
        args.append(sa.PrimaryKeyConstraint(*pk, name=f"pk_{name}"))
    op.create_table(name, *args, if_not_exists=True)


def _index(table: str, *columns: str, unique: bool = False) -> None:
    op.create_index(f"idx_{table}_{'_'.join(columns)}", table, list(columns), unique=unique,
                    if_not_exists=True)


def _serial(name: str = "id") -> sa.Column:
    """An integer key the database numbers (SQLite: the rowid alias; PostgreSQL: serial)."""
    return sa.Column(name, I, primary_key=True, autoincrement=True)


def upgrade() -> None:
    c = sa.Column
    # -- registry (fleet_server.registry) ------------------------------------------------
    _table("publishers", c("key_id", T), c("name", T), c("pem", T), c("added_at", F),
           pk=("key_id",))
    _table("bundles", c("id", T), c("name", T), c("version", T), c("ref", T), c("size", B),
           c("publisher_key_id", T), c("manifest", T), c("chunk_size", B),
           c("chunk_hashes", T), c("uploaded_at", F), pk=("id",))
    _index("bundles", "ref", unique=True)
    _table("enrolment_tokens", c("token_hash", T), c("group_name", T), c("created_at", F),
           c("expires_at", F), c("used", I), c("used_by", T), pk=("token_hash",))
    _table("devices", c("id", T), c("group_name", T), c("public_key", T),
           c("mqtt_secret_hash", T), c("enrolled_at", F), c("online", I), c("last_seen", F),
           c("state", J), c("active_bundle", T), c("delegate", T), c("telemetry_summary", T),
           c("last_issued_seq", B), c("desired_sha", T), c("desired_deployment", T),
           c("desired_envelope", T), pk=("id",))
    for column in ("group_name", "online", "last_seen", "active_bundle", "delegate"):
        _index("devices", column)  # device-list filters and sorts (fleet_server.device_query)
    _table("deployments", c("id", T), c("bundle_ref", T), c("bundle_id", T),
           c("target_kind", T), c("target_value", T), c("created_at", F), c("created_by", T),
           pk=("id",))
    _table("deployment_targets", c("deployment_id", T), c("device_id", T),
           c("instruction_seq", B), c("state", T), c("error", T), c("updated_at", F),
           pk=("deployment_id", "device_id"))
    _table("telemetry", c("device_id", T), c("seq", B), c("ts", F), c("data", J),
           pk=("device_id", "seq"))
    _index("telemetry", "ts")
    _table("events", c("device_id", T), c("seq", B), c("ts", F), c("kind", T), c("data", T),
           pk=("device_id", "seq"))
    _table("counters", c("name", T), c("value", B), pk=("name",))
    _table("report_floors", c("device_id", T), c("tbl", T), c("seq", B),
           pk=("device_id", "tbl"))
    # -- rollouts (fleet_server.rollout_store) --------------------------------------------
    _table("rollouts", c("id", T), c("bundle_id", T), c("bundle_ref", T), c("target_kind", T),
           c("target_value", T), c("devices", T), c("plan", T), c("state", T),
           c("stage_index", I), c("stage_started_at", F), c("created_at", F),
           c("created_by", T), c("updated_at", F), c("last_evaluation", T), pk=("id",))
    _table("rollout_devices", c("rollout_id", T), c("device_id", T),
           c("previous_bundle_id", T), c("role", T), c("stage_index", I),
           c("instruction_seq", B), c("deployment_id", T), c("assigned_at", F),
           c("excluded", I), pk=("rollout_id", "device_id"))
    _table("rollout_decisions", _serial(), c("rollout_id", T), c("ts", F),
           c("stage_index", I), c("stage", T), c("action", T), c("actor", T), c("reason", T),
           c("data", T))
    _index("rollout_decisions", "rollout_id")
    _table("shadow_reports", c("device_id", T), c("seq", B), c("ts", F),
           c("candidate_sha256", T), c("received_at", F), c("data", J),
           pk=("device_id", "seq"))
    _index("shadow_reports", "candidate_sha256", "received_at")
    _table("rollout_gate_history", _serial(), c("rollout_id", T), c("stage_index", I),
           c("gate", T), c("ts", F), c("n", F), c("estimate", F), c("lower", F),
           c("upper", F), c("promote", F), c("halt", F), c("decision", T))
    _index("rollout_gate_history", "rollout_id", "stage_index")
    # -- audit log (fleet_server.audit) ---------------------------------------------------
    _table("audit", _serial(), c("ts", F), c("actor", T), c("action", T), c("subject", T),
           c("detail", T), c("client", T))
    if "client" not in {col["name"] for col in sa.inspect(op.get_bind()).get_columns("audit")}:
        op.add_column("audit", c("client", T))
    _index("audit", "subject")
    # -- people and API tokens (fleet_server.users) ---------------------------------------
    _table("users", c("username", T), c("password_hash", T), c("role", T), c("disabled", I),
           c("created_at", F), c("created_by", T), c("updated_at", F), c("last_login_at", F),
           pk=("username",))
    _table("api_tokens", c("id", T), c("name", T), c("role", T), c("token_hash", T),
           c("created_at", F), c("created_by", T), c("expires_at", F), c("revoked_at", F),
           c("last_used_at", F), pk=("id",))
    _index("api_tokens", "token_hash", unique=True)


def downgrade() -> None:
    raise NotImplementedError("the baseline is not downgraded: restore a backup instead")
