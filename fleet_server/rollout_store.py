"""Rollout state in the registry's SQLite file: rollouts, their devices, decisions, shadow
reports and the audit log. Its own connection (WAL lets it share the file with Registry);
keyword-only functions; every write is one short transaction.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from fleet_server import audit
from fleet_server.db import open_database
from fleet_server.errors import NotFoundError

Row = dict[str, Any]

_JSON = ("plan", "devices", "last_evaluation", "data", "detail")
ACTIVE_STATES = ("running", "paused")
ROLLOUT_STATES = ("running", "paused", "halted", "aborted", "completed")


def _decode(row: Row) -> Row:
    out = dict(row)
    for col in _JSON:
        if isinstance(out.get(col), str):
            out[col] = json.loads(out[col])
    if "excluded" in out:
        out["excluded"] = bool(out["excluded"])
    return out


class RolloutStore:
    def __init__(self, path: Path) -> None:
        self._db = open_database(path)
        self._lock = threading.RLock()
        with self._lock:
            self._create()

    def close(self) -> None:
        with self._lock:
            self._db.conn.close()

    def _create(self) -> None:
        db = self._db
        db.table("rollouts").create(
            {"id": str, "bundle_id": str, "bundle_ref": str, "target_kind": str,
             "target_value": str, "devices": str, "plan": str, "state": str,
             "stage_index": int, "stage_started_at": float, "created_at": float,
             "created_by": str, "updated_at": float, "last_evaluation": str},
            pk="id", if_not_exists=True)
        db.table("rollout_devices").create(
            {"rollout_id": str, "device_id": str, "previous_bundle_id": str, "role": str,
             "stage_index": int, "instruction_seq": int, "deployment_id": str,
             "assigned_at": float, "excluded": int},
            pk=("rollout_id", "device_id"), if_not_exists=True)
        db.table("rollout_decisions").create(
            {"id": int, "rollout_id": str, "ts": float, "stage_index": int, "stage": str,
             "action": str, "actor": str, "reason": str, "data": str},
            pk="id", if_not_exists=True)
        db.table("rollout_decisions").create_index(["rollout_id"], if_not_exists=True)
        db.table("shadow_reports").create(
            {"device_id": str, "seq": int, "ts": float, "candidate_sha256": str,
             "received_at": float, "data": str},
            pk=("device_id", "seq"), if_not_exists=True)
        db.table("shadow_reports").create_index(["candidate_sha256", "received_at"],
                                          if_not_exists=True)
        audit.create_table(db)  # the one audit log (fleet_server.audit), shared
        # added with sequential gates; created on open, so older registry files gain it
        db.table("rollout_gate_history").create(
            {"id": int, "rollout_id": str, "stage_index": int, "gate": str, "ts": float,
             "n": float, "estimate": float, "lower": float, "upper": float, "promote": float,
             "halt": float, "decision": str}, pk="id", if_not_exists=True)
        db.table("rollout_gate_history").create_index(["rollout_id", "stage_index"],
                                                if_not_exists=True)
        db.table("counters").create({"name": str, "value": int}, pk="name", if_not_exists=True)
        if "telemetry" in db.table_names():
            db.table("telemetry").create_index(["ts"], if_not_exists=True)

    # -- rollouts ---------------------------------------------------------------------------
    def next_rollout_id(self) -> str:
        with self._lock, self._db.conn:
            cur = self._db.execute("select value from counters where name = 'rollouts'")
            row = cur.fetchone()
            value = (int(row[0]) + 1) if row else 1
            self._db.execute("insert or replace into counters (name, value) values (?, ?)",
                             ["rollouts", value])
        return f"ro-{value}"

    def add_rollout(self, *, rollout_id: str, bundle_id: str, bundle_ref: str,
                    target_kind: str, target_value: str, devices: list[str],
                    plan: dict[str, Any], created_by: str, now: float) -> Row:
        row = {"id": rollout_id, "bundle_id": bundle_id, "bundle_ref": bundle_ref,
               "target_kind": target_kind, "target_value": target_value,
               "devices": json.dumps(devices), "plan": json.dumps(plan), "state": "running",
               "stage_index": 0, "stage_started_at": now, "created_at": now,
               "created_by": created_by, "updated_at": now, "last_evaluation": None}
        with self._lock:
            self._db.table("rollouts").insert(row)
        return _decode(row)

    def get_rollout(self, *, rollout_id: str) -> Row:
        with self._lock:
            rows = list(self._db.table("rollouts").rows_where("id = ?", [rollout_id]))
        if not rows:
            raise NotFoundError(f"no rollout {rollout_id}")
        return _decode(rows[0])

    def list_rollouts(self, *, states: tuple[str, ...] | None = None) -> list[Row]:
        with self._lock:
            if states:
                marks = ",".join("?" for _ in states)
                rows = self._db.table("rollouts").rows_where(f"state in ({marks})", list(states),
                                                       order_by="created_at desc")
            else:
                rows = self._db.table("rollouts").rows_where(order_by="created_at desc")
            return [_decode(r) for r in rows]

    def update_rollout(self, *, rollout_id: str, now: float, **fields: Any) -> None:
        for key in ("last_evaluation",):
            if key in fields and not isinstance(fields[key], str | None):
                fields[key] = json.dumps(fields[key])
        with self._lock:
            self._db.table("rollouts").update(rollout_id, {**fields, "updated_at": now})

    # -- rollout devices --------------------------------------------------------------------
    def rollout_devices(self, *, rollout_id: str) -> dict[str, Row]:
        with self._lock:
            return {r["device_id"]: _decode(r) for r in self._db.table("rollout_devices").rows_where(
                "rollout_id = ?", [rollout_id], order_by="device_id")}

    def set_rollout_device(self, *, rollout_id: str, device_id: str, role: str,
                           stage_index: int, instruction_seq: int, deployment_id: str,
                           previous_bundle_id: str | None, now: float) -> None:
        with self._lock:
            self._db.table("rollout_devices").upsert({
                "rollout_id": rollout_id, "device_id": device_id, "role": role,
                "stage_index": stage_index, "instruction_seq": instruction_seq,
                "deployment_id": deployment_id, "previous_bundle_id": previous_bundle_id,
                "assigned_at": now, "excluded": 0}, pk=("rollout_id", "device_id"))

    def set_excluded(self, *, rollout_id: str, device_ids: list[str]) -> None:
        with self._lock, self._db.conn:
            for device_id in device_ids:
                self._db.execute(
                    "update rollout_devices set excluded = 1 where rollout_id = ? and "
                    "device_id = ?", [rollout_id, device_id])

    # -- decisions and audit ----------------------------------------------------------------
    def add_decision(self, *, rollout_id: str, ts: float, stage_index: int, stage: str,
                     action: str, actor: str, reason: str, data: dict[str, Any]) -> None:
        with self._lock:
            self._db.table("rollout_decisions").insert({
                "rollout_id": rollout_id, "ts": ts, "stage_index": stage_index,
                "stage": stage, "action": action, "actor": actor, "reason": reason,
                "data": json.dumps(data)})

    def list_decisions(self, *, rollout_id: str) -> list[Row]:
        with self._lock:
            return [_decode(r) for r in self._db.table("rollout_decisions").rows_where(
                "rollout_id = ?", [rollout_id], order_by="id")]

    def add_audit(self, *, actor: str, action: str, subject: str,
                  detail: dict[str, Any], ts: float | None = None) -> None:
        with self._lock:
            self._db.table("audit").insert({"ts": time.time() if ts is None else ts,
                                      "actor": actor, "action": action, "subject": subject,
                                      "detail": json.dumps(detail),
                                      "client": audit.current_client()})

    def list_audit(self, *, limit: int = 200, subject: str | None = None) -> list[Row]:
        with self._lock:
            where, args = ("subject = ?", [subject]) if subject else (None, [])
            return [_decode(r) for r in self._db.table("audit").rows_where(
                where, args, order_by="id desc", limit=limit)]

    # -- sequential gate intervals over time ----------------------------------------------
    def add_gate_intervals(self, *, rollout_id: str, stage_index: int, ts: float,
                           gates: list[dict[str, Any]]) -> int:
        """Store each sequential gate's interval unless its sample count is the one stored
        last for that gate (ticks without new samples add nothing). Returns rows added."""
        added = 0
        with self._lock, self._db.conn:
            for g in gates:
                last = self._db.execute(
                    "select n, decision from rollout_gate_history where rollout_id = ? and "
                    "stage_index = ? and gate = ? order by id desc limit 1",
                    [rollout_id, stage_index, g["name"]]).fetchone()
                if last is not None and (last[0], last[1]) == (g["n"], g["decision"]):
                    continue
                self._db.execute(
                    "insert into rollout_gate_history (rollout_id, stage_index, gate, ts, n, "
                    "estimate, lower, upper, promote, halt, decision) values "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [rollout_id, stage_index, g["name"], ts, g["n"], g["measured"],
                     g["lower"], g["upper"], g["threshold"], g["halt"], g["decision"]])
                added += 1
        return added

    def gate_history(self, *, rollout_id: str) -> list[Row]:
        """Every stored interval of the rollout, oldest first."""
        with self._lock:
            return [dict(r) for r in self._db.table("rollout_gate_history").rows_where(
                "rollout_id = ?", [rollout_id], order_by="id")]

    # -- shadow reports ---------------------------------------------------------------------
    def add_shadow_report(self, *, device_id: str, seq: int, ts: float,
                          candidate_sha256: str, data: dict[str, Any]) -> bool:
        """Store one report; False if ``(device_id, seq)`` was already stored."""
        with self._lock:
            try:
                with self._db.conn:
                    self._db.execute(
                        "insert into shadow_reports (device_id, seq, ts, candidate_sha256, "
                        "received_at, data) values (?, ?, ?, ?, ?, ?)",
                        [device_id, seq, ts, candidate_sha256, time.time(), json.dumps(data)])
            except sqlite3.IntegrityError:
                return False
            return True

    def shadow_reports(self, *, candidate_sha256: str, device_ids: list[str],
                       since: float) -> list[Row]:
        if not device_ids:
            return []
        with self._lock:
            marks = ",".join("?" for _ in device_ids)
            rows = self._db.query(
                f"select device_id, seq, ts, data from shadow_reports where "  # noqa: S608 - only ? placeholders, values bound
                f"candidate_sha256 = ? and received_at >= ? and device_id in ({marks}) "
                f"order by ts", [candidate_sha256, since, *device_ids])
            return [_decode(r) for r in rows]

    def telemetry(self, *, device_ids: list[str], since: float) -> list[Row]:
        """Telemetry rows (the registry's table) of these devices since ``since``."""
        if not device_ids:
            return []
        with self._lock:
            marks = ",".join("?" for _ in device_ids)
            rows = self._db.query(
                f"select device_id, seq, ts, data from telemetry where ts >= ? and "  # noqa: S608 - only ? placeholders, values bound
                f"device_id in ({marks}) order by ts", [since, *device_ids])
            return [_decode(r) for r in rows]

    def device_telemetry_series(self, *, device_id: str, limit: int = 200) -> list[Row]:
        with self._lock:
            rows = self._db.query(
                "select seq, ts, data from telemetry where device_id = ? order by seq desc "
                "limit ?", [device_id, limit])
            return list(reversed([_decode(r) for r in rows]))

    def target_states(self, *, deployment_ids: list[str]) -> list[Row]:
        """Install states of the registry's deployment targets for these deployments."""
        if not deployment_ids:
            return []
        with self._lock:
            marks = ",".join("?" for _ in deployment_ids)
            return list(self._db.query(
                f"select deployment_id, device_id, instruction_seq, state, error from "  # noqa: S608 - only ? placeholders, values bound
                f"deployment_targets where deployment_id in ({marks})", deployment_ids))
