"""Rollout state in the registry database: rollouts, their devices, decisions, shadow
reports and the audit log. Shares the ``Database`` with ``Registry`` (the server opens one);
keyword-only functions; every write is one short transaction.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from fleet_server import audit
from fleet_server.db import Database, open_database
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
    def __init__(self, target: Database | Path | str) -> None:
        self._owned = not isinstance(target, Database)
        self._db = open_database(target)
        self._lock = threading.RLock()
        self.lock = self._lock  # taken before a transaction spanning several calls

    def close(self) -> None:
        with self._lock:
            if self._owned:
                self._db.close()

    # -- rollouts ---------------------------------------------------------------------------
    def next_rollout_id(self) -> str:
        with self._lock:
            return f"ro-{self._db.next_counter('rollouts')}"

    def add_rollout(self, *, rollout_id: str, bundle_id: str, bundle_ref: str,
                    target_kind: str, target_value: str, devices: list[str],
                    plan: dict[str, Any], created_by: str, now: float) -> Row:
        row = {"id": rollout_id, "bundle_id": bundle_id, "bundle_ref": bundle_ref,
               "target_kind": target_kind, "target_value": target_value,
               "devices": json.dumps(devices), "plan": json.dumps(plan), "state": "running",
               "stage_index": 0, "stage_started_at": now, "created_at": now,
               "created_by": created_by, "updated_at": now, "last_evaluation": None}
        with self._lock:
            self._db.insert("rollouts", row)
        return _decode(row)

    def get_rollout(self, *, rollout_id: str) -> Row:
        with self._lock:
            row = self._db.get("rollouts", {"id": rollout_id})
        if row is None:
            raise NotFoundError(f"no rollout {rollout_id}")
        return _decode(row)

    def list_rollouts(self, *, states: tuple[str, ...] | None = None) -> list[Row]:
        with self._lock:
            if states:
                marks = ",".join("?" for _ in states)
                rows = self._db.select("rollouts", f"state IN ({marks})", list(states),
                                       order_by="created_at DESC")
            else:
                rows = self._db.select("rollouts", order_by="created_at DESC")
            return [_decode(r) for r in rows]

    def update_rollout(self, *, rollout_id: str, now: float, **fields: Any) -> None:
        for key in ("last_evaluation",):
            if key in fields and not isinstance(fields[key], str | None):
                fields[key] = json.dumps(fields[key])
        with self._lock:
            self._db.update("rollouts", {"id": rollout_id}, {**fields, "updated_at": now})

    # -- rollout devices --------------------------------------------------------------------
    def rollout_devices(self, *, rollout_id: str) -> dict[str, Row]:
        with self._lock:
            return {r["device_id"]: _decode(r) for r in self._db.select(
                "rollout_devices", "rollout_id = ?", [rollout_id], order_by="device_id")}

    def set_rollout_device(self, *, rollout_id: str, device_id: str, role: str,
                           stage_index: int, instruction_seq: int, deployment_id: str,
                           previous_bundle_id: str | None, now: float) -> None:
        with self._lock:
            self._db.upsert("rollout_devices", {
                "rollout_id": rollout_id, "device_id": device_id, "role": role,
                "stage_index": stage_index, "instruction_seq": instruction_seq,
                "deployment_id": deployment_id, "previous_bundle_id": previous_bundle_id,
                "assigned_at": now, "excluded": 0}, pk=("rollout_id", "device_id"))

    def set_excluded(self, *, rollout_id: str, device_ids: list[str]) -> None:
        with self._lock, self._db.transaction():
            for device_id in device_ids:
                self._db.run("UPDATE rollout_devices SET excluded = 1 WHERE rollout_id = ? AND "
                             "device_id = ?", [rollout_id, device_id])

    # -- decisions and audit ----------------------------------------------------------------
    def add_decision(self, *, rollout_id: str, ts: float, stage_index: int, stage: str,
                     action: str, actor: str, reason: str, data: dict[str, Any]) -> None:
        with self._lock:
            self._db.insert("rollout_decisions", {
                "rollout_id": rollout_id, "ts": ts, "stage_index": stage_index,
                "stage": stage, "action": action, "actor": actor, "reason": reason,
                "data": json.dumps(data)})

    def list_decisions(self, *, rollout_id: str) -> list[Row]:
        with self._lock:
            return [_decode(r) for r in self._db.select(
                "rollout_decisions", "rollout_id = ?", [rollout_id], order_by="id")]

    def add_audit(self, *, actor: str, action: str, subject: str,
                  detail: dict[str, Any], ts: float | None = None) -> None:
        with self._lock:
            self._db.insert("audit", {"ts": time.time() if ts is None else ts,
                                      "actor": actor, "action": action, "subject": subject,
                                      "detail": json.dumps(detail),
                                      "client": audit.current_client()})

    def list_audit(self, *, limit: int = 200, subject: str | None = None) -> list[Row]:
        with self._lock:
            where, args = ("subject = ?", [subject]) if subject else (None, [])
            return [_decode(r) for r in self._db.select(
                "audit", where, args, order_by="id DESC", limit=limit)]

    # -- sequential gate intervals over time ----------------------------------------------
    def add_gate_intervals(self, *, rollout_id: str, stage_index: int, ts: float,
                           gates: list[dict[str, Any]]) -> int:
        """Store each sequential gate's interval unless its sample count is the one stored
        last for that gate (ticks without new samples add nothing). Returns rows added."""
        added = 0
        with self._lock, self._db.transaction():
            for g in gates:
                last = self._db.first(
                    "select n, decision from rollout_gate_history where rollout_id = ? and "
                    "stage_index = ? and gate = ? order by id desc limit 1",
                    [rollout_id, stage_index, g["name"]])
                if last is not None and (last[0], last[1]) == (g["n"], g["decision"]):
                    continue
                self._db.run(
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
            return self._db.select("rollout_gate_history", "rollout_id = ?", [rollout_id],
                                   order_by="id")

    # -- shadow reports ---------------------------------------------------------------------
    def add_shadow_report(self, *, device_id: str, seq: int, ts: float,
                          candidate_sha256: str, data: dict[str, Any]) -> bool:
        """Store one report; False if ``(device_id, seq)`` was already stored."""
        with self._lock:
            return bool(self._db.insert("shadow_reports", {
                "device_id": device_id, "seq": seq, "ts": ts,
                "candidate_sha256": candidate_sha256, "received_at": time.time(),
                "data": json.dumps(data)}, ignore_pk=("device_id", "seq")))

    def shadow_reports(self, *, candidate_sha256: str, device_ids: list[str],
                       since: float) -> list[Row]:
        if not device_ids:
            return []
        with self._lock:
            marks = ",".join("?" for _ in device_ids)
            rows = self._db.rows(
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
            rows = self._db.rows(
                f"select device_id, seq, ts, data from telemetry where ts >= ? and "  # noqa: S608 - only ? placeholders, values bound
                f"device_id in ({marks}) order by ts", [since, *device_ids])
            return [_decode(r) for r in rows]

    def device_telemetry_series(self, *, device_id: str, limit: int = 200) -> list[Row]:
        with self._lock:
            rows = self._db.rows(
                "select seq, ts, data from telemetry where device_id = ? order by seq desc "
                "limit ?", [device_id, limit])
            return list(reversed([_decode(r) for r in rows]))

    def target_states(self, *, deployment_ids: list[str]) -> list[Row]:
        """Install states of the registry's deployment targets for these deployments."""
        if not deployment_ids:
            return []
        with self._lock:
            marks = ",".join("?" for _ in deployment_ids)
            return self._db.rows(
                f"select deployment_id, device_id, instruction_seq, state, error from "  # noqa: S608 - only ? placeholders, values bound
                f"deployment_targets where deployment_id in ({marks})", deployment_ids)
