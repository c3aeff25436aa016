"""The registry: narrow keyword-only functions over one SQLite file (sqlite-utils, WAL).

Every method takes the registry lock, so the REST handlers, the broker's auth plugin and the
MQTT bridge thread may share one instance.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import sqlite_utils

from fleet_server import device_query
from fleet_server.db import open_database
from fleet_server.errors import ConflictError, NotFoundError

Row = dict[str, Any]


def hash_secret(secret: str) -> str:
    """SHA-256 hex of a token or MQTT secret (only hashes are stored)."""
    return hashlib.sha256(secret.encode()).hexdigest()


_JSON_COLUMNS = {
    "devices": ("state", "telemetry_summary"),
    "bundles": ("manifest", "chunk_hashes"),
    "telemetry": ("data",),
    "events": ("data",),
}


def _decode(table: str, row: Row) -> Row:
    out = dict(row)
    for col in _JSON_COLUMNS.get(table, ()):
        if isinstance(out.get(col), str):
            out[col] = json.loads(out[col])
    for col in ("online", "used"):
        if col in out and out[col] is not None:
            out[col] = bool(out[col])
    return out


class Registry:
    """Publishers, bundles, enrolment tokens, devices, deployments, telemetry and events."""

    def __init__(self, path: Path) -> None:
        self._db = open_database(path)
        self._lock = threading.RLock()
        self._create()
        self._create_query_indexes()

    def close(self) -> None:
        with self._lock:
            self._db.conn.close()

    # -- schema -----------------------------------------------------------------------
    def _create(self) -> None:
        db = self._db
        with self._lock:
            db.table("publishers").create(
                {"key_id": str, "name": str, "pem": str, "added_at": float},
                pk="key_id", if_not_exists=True,
            )
            db.table("bundles").create(
                {"id": str, "name": str, "version": str, "ref": str, "size": int,
                 "publisher_key_id": str, "manifest": str, "chunk_size": int,
                 "chunk_hashes": str, "uploaded_at": float},
                pk="id", if_not_exists=True,
            )
            db.table("bundles").create_index(["ref"], unique=True, if_not_exists=True)
            db.table("enrolment_tokens").create(
                {"token_hash": str, "group_name": str, "created_at": float,
                 "expires_at": float, "used": int, "used_by": str},
                pk="token_hash", if_not_exists=True,
            )
            db.table("devices").create(
                {"id": str, "group_name": str, "public_key": str, "mqtt_secret_hash": str,
                 "enrolled_at": float, "online": int, "last_seen": float, "state": str,
                 "active_bundle": str, "delegate": str, "telemetry_summary": str,
                 "last_issued_seq": int, "desired_sha": str, "desired_deployment": str,
                 "desired_envelope": str},
                pk="id", if_not_exists=True,
            )
            db.table("deployments").create(
                {"id": str, "bundle_ref": str, "bundle_id": str, "target_kind": str,
                 "target_value": str, "created_at": float, "created_by": str},
                pk="id", if_not_exists=True,
            )
            db.table("deployment_targets").create(
                {"deployment_id": str, "device_id": str, "instruction_seq": int,
                 "state": str, "error": str, "updated_at": float},
                pk=("deployment_id", "device_id"), if_not_exists=True,
            )
            db.table("telemetry").create(
                {"device_id": str, "seq": int, "ts": float, "data": str},
                pk=("device_id", "seq"), if_not_exists=True,
            )
            db.table("events").create(
                {"device_id": str, "seq": int, "ts": float, "kind": str, "data": str},
                pk=("device_id", "seq"), if_not_exists=True,
            )
            db.table("counters").create({"name": str, "value": int}, pk="name", if_not_exists=True)
            db.table("report_floors").create(  # retention: seqs at or below were pruned
                {"device_id": str, "tbl": str, "seq": int},
                pk=("device_id", "tbl"), if_not_exists=True,
            )

    # -- publishers -------------------------------------------------------------------
    def add_publisher(self, *, key_id: str, name: str, pem: str) -> Row:
        with self._lock:
            row = {"key_id": key_id, "name": name, "pem": pem, "added_at": time.time()}
            existing = self._get("publishers", key_id)
            if existing is not None:
                return existing
            self._db.table("publishers").insert(row)
            return row

    def list_publishers(self) -> list[Row]:
        with self._lock:
            return list(self._db.table("publishers").rows_where(order_by="added_at"))

    def get_publisher(self, *, key_id: str) -> Row:
        with self._lock:
            row = self._get("publishers", key_id)
        if row is None:
            raise NotFoundError(f"no publisher with key id {key_id}")
        return row

    # -- bundles ----------------------------------------------------------------------
    def add_bundle(self, *, sha256: str, name: str, version: str, size: int,
                   publisher_key_id: str, manifest: dict[str, Any], chunk_size: int,
                   chunk_hashes: list[str]) -> tuple[Row, bool]:
        """Store a verified bundle; returns (row, created). Same ref other bytes -> ConflictError."""
        ref = f"{name}@{version}"
        with self._lock:
            existing = self._get("bundles", sha256)
            if existing is not None:
                return _decode("bundles", existing), False
            by_ref = self._by_ref(ref)
            if by_ref is not None:
                raise ConflictError(f"{ref} is already stored with other bytes ({by_ref['id']})")
            row = {"id": sha256, "name": name, "version": version, "ref": ref, "size": size,
                   "publisher_key_id": publisher_key_id, "manifest": json.dumps(manifest),
                   "chunk_size": chunk_size, "chunk_hashes": json.dumps(chunk_hashes),
                   "uploaded_at": time.time()}
            self._db.table("bundles").insert(row)
            return _decode("bundles", row), True

    def list_bundles(self) -> list[Row]:
        with self._lock:
            return [_decode("bundles", r) for r in self._db.table("bundles").rows_where(
                order_by="uploaded_at desc")]

    def find_bundle(self, *, key: str) -> Row:
        """A bundle by sha256 id or by ``name@version`` ref."""
        with self._lock:
            row = self._get("bundles", key) or self._by_ref(key)
        if row is None:
            raise NotFoundError(f"no bundle {key}")
        return _decode("bundles", row)

    def _by_ref(self, ref: str) -> Row | None:
        rows = list(self._db.table("bundles").rows_where("ref = ?", [ref], limit=1))
        return rows[0] if rows else None

    # -- enrolment tokens ---------------------------------------------------------------
    def add_enrolment_token(self, *, token: str, group: str, expires_at: float) -> Row:
        with self._lock:
            row = {"token_hash": hash_secret(token), "group_name": group,
                   "created_at": time.time(), "expires_at": expires_at, "used": 0,
                   "used_by": None}
            self._db.table("enrolment_tokens").insert(row)
            return row

    def enrolment_token_group(self, *, token: str, now: float) -> str | None:
        """The group of a valid token (not consumed); None if unknown, used or expired."""
        with self._lock:
            row = self._get("enrolment_tokens", hash_secret(token))
            if row is None or row["used"] or row["expires_at"] <= now:
                return None
            return str(row["group_name"])

    def consume_enrolment_token(self, *, token: str, now: float) -> str | None:
        """Mark a valid token used and return its group; None if unknown, used or expired."""
        with self._lock:
            row = self._get("enrolment_tokens", hash_secret(token))
            if row is None or row["used"] or row["expires_at"] <= now:
                return None
            self._db.table("enrolment_tokens").update(row["token_hash"], {"used": 1})
            return str(row["group_name"])

    def mark_token_used_by(self, *, token: str, device_id: str) -> None:
        with self._lock:
            self._db.table("enrolment_tokens").update(hash_secret(token), {"used_by": device_id})

    # -- devices ----------------------------------------------------------------------
    def add_device(self, *, device_id: str, group: str, public_key: str,
                   mqtt_secret_hash: str) -> Row:
        with self._lock:
            if self._get("devices", device_id) is not None:
                raise ConflictError(f"device {device_id} is already enrolled")
            row = {"id": device_id, "group_name": group, "public_key": public_key,
                   "mqtt_secret_hash": mqtt_secret_hash, "enrolled_at": time.time(),
                   "online": 0, "last_seen": None, "state": None, "active_bundle": None,
                   "delegate": None, "telemetry_summary": None, "last_issued_seq": 0,
                   "desired_sha": None, "desired_deployment": None, "desired_envelope": None}
            self._db.table("devices").insert(row)
            return _decode("devices", row)

    def device_exists(self, *, device_id: str) -> bool:
        with self._lock:
            return self._get("devices", device_id) is not None

    def get_device(self, *, device_id: str) -> Row:
        with self._lock:
            row = self._get("devices", device_id)
        if row is None:
            raise NotFoundError(f"no device {device_id}")
        return _decode("devices", row)

    def device_secret_hash(self, *, device_id: str) -> str | None:
        with self._lock:
            row = self._get("devices", device_id)
        return None if row is None else str(row["mqtt_secret_hash"])

    def list_devices(self, *, group: str | None = None) -> list[Row]:
        with self._lock:
            if group is None:
                rows = self._db.table("devices").rows_where(order_by="id")
            else:
                rows = self._db.table("devices").rows_where("group_name = ?", [group], order_by="id")
            return [_decode("devices", r) for r in rows]

    def update_device_state(self, *, device_id: str, online: bool, ts: float,
                            state: dict[str, Any], active_bundle: str | None,
                            delegate: str | None) -> None:
        with self._lock:
            if self._get("devices", device_id) is None:
                return
            self._db.table("devices").update(device_id, {
                "online": int(online), "last_seen": ts, "state": json.dumps(state),
                "active_bundle": active_bundle, "delegate": delegate})

    def touch_device(self, *, device_id: str, ts: float) -> None:
        with self._lock:
            if self._get("devices", device_id) is not None:
                self._db.table("devices").update(device_id, {"last_seen": ts})

    def issue_seq(self, *, device_id: str, sha256: str | None, deployment_id: str) -> int:
        """Reserve the next instruction seq for a device and remember what it asks for."""
        with self._lock:
            row = self._get("devices", device_id)
            if row is None:
                raise NotFoundError(f"no device {device_id}")
            seq = int(row["last_issued_seq"] or 0) + 1
            self._db.table("devices").update(device_id, {
                "last_issued_seq": seq, "desired_sha": sha256,
                "desired_deployment": deployment_id})
            return seq

    def set_desired_envelope(self, *, device_id: str, envelope: bytes) -> None:
        """Keep the signed instruction so it can be re-published after a broker restart."""
        with self._lock:
            self._db.table("devices").update(device_id, {"desired_envelope": envelope.decode()})

    def desired_envelopes(self) -> list[tuple[str, bytes]]:
        with self._lock:
            rows = self._db.table("devices").rows_where(
                "desired_envelope is not null", select="id, desired_envelope")
            return [(str(r["id"]), str(r["desired_envelope"]).encode()) for r in rows]

    # -- deployments --------------------------------------------------------------------
    def add_deployment(self, *, deployment_id: str, bundle_ref: str, bundle_id: str,
                       target_kind: str, target_value: str, created_by: str) -> Row:
        with self._lock:
            row = {"id": deployment_id, "bundle_ref": bundle_ref, "bundle_id": bundle_id,
                   "target_kind": target_kind, "target_value": target_value,
                   "created_at": time.time(), "created_by": created_by}
            self._db.table("deployments").insert(row)
            return row

    def next_deployment_id(self) -> str:
        with self._lock:
            row = self._get("counters", "deployments")
            value = int(row["value"]) + 1 if row else 1
            self._db.table("counters").upsert({"name": "deployments", "value": value}, pk="name")
            return f"dep-{value}"

    def add_deployment_target(self, *, deployment_id: str, device_id: str,
                              instruction_seq: int, state: str = "issued") -> None:
        with self._lock:
            self._db.table("deployment_targets").insert({
                "deployment_id": deployment_id, "device_id": device_id,
                "instruction_seq": instruction_seq, "state": state, "error": None,
                "updated_at": time.time()}, replace=True)

    def update_target_state(self, *, device_id: str, instruction_seq: int, state: str,
                            error: str | None) -> bool:
        """Record the install state a device reports for one of its instructions."""
        with self._lock:
            rows = list(self._db.table("deployment_targets").rows_where(
                "device_id = ? and instruction_seq = ?", [device_id, instruction_seq]))
            for r in rows:
                if r["state"] == state and r["error"] == error:
                    continue
                self._db.table("deployment_targets").update(
                    (r["deployment_id"], device_id),
                    {"state": state, "error": error, "updated_at": time.time()})
            return bool(rows)

    def list_deployments(self) -> list[Row]:
        with self._lock:
            return [self._with_targets(r) for r in self._db.table("deployments").rows_where(
                order_by="created_at desc")]

    def get_deployment(self, *, deployment_id: str) -> Row:
        with self._lock:
            row = self._get("deployments", deployment_id)
            if row is None:
                raise NotFoundError(f"no deployment {deployment_id}")
            return self._with_targets(row)

    def _with_targets(self, row: Row) -> Row:
        out = dict(row)
        out["targets"] = list(self._db.table("deployment_targets").rows_where(
            "deployment_id = ?", [row["id"]], order_by="device_id"))
        return out

    # -- telemetry and events -------------------------------------------------------------
    def add_telemetry(self, *, device_id: str, seq: int, ts: float,
                      data: dict[str, Any]) -> bool:
        """Store one report; False if ``(device_id, seq)`` was already stored (or pruned)."""
        with self._lock:
            if self._get("devices", device_id) is None:
                return False
            table = self._db.table("telemetry")
            before = table.count_where("device_id = ? and seq = ?", [device_id, seq])
            if before or seq <= self._floor("telemetry", device_id):
                return False
            table.insert({"device_id": device_id, "seq": seq, "ts": ts,
                          "data": json.dumps(data)})
            self._db.table("devices").update(device_id, {
                "telemetry_summary": json.dumps(data), "last_seen": max(ts, time.time())})
            return True

    def list_telemetry(self, *, device_id: str, limit: int = 100) -> list[Row]:
        with self._lock:
            return [_decode("telemetry", r) for r in self._db.table("telemetry").rows_where(
                "device_id = ?", [device_id], order_by="seq desc", limit=limit)]

    def add_event(self, *, device_id: str, seq: int, ts: float, kind: str,
                  data: dict[str, Any]) -> bool:
        with self._lock:
            if self._get("devices", device_id) is None:
                return False
            if self._db.table("events").count_where("device_id = ? and seq = ?", [device_id, seq]):
                return False
            if seq <= self._floor("events", device_id):
                return False
            self._db.table("events").insert({"device_id": device_id, "seq": seq, "ts": ts,
                                       "kind": kind, "data": json.dumps(data)})
            return True

    def list_events(self, *, device_id: str, limit: int = 100) -> list[Row]:
        with self._lock:
            return [_decode("events", r) for r in self._db.table("events").rows_where(
                "device_id = ?", [device_id], order_by="seq desc", limit=limit)]

    def prune_reports(self, *, table: str, keep_rows: int, older_than: float) -> int:
        """Retention of ``telemetry`` or ``events``: per device keep the newest ``keep_rows``
        rows and none with ``ts < older_than``. Returns the rows deleted. The highest pruned
        seq is remembered per device, so a re-sent old report is not stored again."""
        if table not in ("telemetry", "events"):
            raise ValueError(f"no retention for table {table!r}")
        with self._lock, self._db.conn:
            conn = self._db.conn
            cuts: dict[str, int] = {}
            over = conn.execute(f"SELECT device_id FROM [{table}] GROUP BY device_id "  # noqa: S608 - table is checked against the whitelist above
                                "HAVING count(*) > ?", [keep_rows]).fetchall()
            for (device_id,) in over:
                (cut,) = conn.execute(f"SELECT seq FROM [{table}] WHERE device_id = ? "  # noqa: S608 - table is checked against the whitelist above
                                      "ORDER BY seq DESC LIMIT 1 OFFSET ?",
                                      [device_id, keep_rows]).fetchone()
                cuts[device_id] = int(cut)
            for device_id, old in conn.execute(f"SELECT device_id, max(seq) FROM [{table}] "  # noqa: S608 - table is checked against the whitelist above
                                               "WHERE ts < ? GROUP BY device_id", [older_than]):
                cuts[device_id] = max(cuts.get(device_id, -1), int(old))
            deleted = 0
            for device_id, cut in cuts.items():
                deleted += conn.execute(
                    f"DELETE FROM [{table}] WHERE device_id = ? AND (seq <= ? OR ts < ?)",  # noqa: S608 - table is checked against the whitelist above
                    [device_id, cut, older_than]).rowcount
                conn.execute(
                    "INSERT INTO report_floors (device_id, tbl, seq) VALUES (?, ?, ?) "
                    "ON CONFLICT (device_id, tbl) DO UPDATE SET seq = max(seq, excluded.seq)",
                    [device_id, table, cut])
            return deleted

    def count_reports(self, *, table: str, device_id: str) -> int:
        if table not in ("telemetry", "events"):
            raise ValueError(f"no reports table {table!r}")
        with self._lock:
            return int(self._db[table].count_where("device_id = ?", [device_id]))

    def _floor(self, table: str, device_id: str) -> int:
        row = self._db.conn.execute("SELECT seq FROM report_floors WHERE device_id = ? "
                                    "AND tbl = ?", [device_id, table]).fetchone()
        return -1 if row is None else int(row[0])

    # -- device-list queries (console, REST filters, CLI flags) ---------------------------
    def _create_query_indexes(self) -> None:
        with self._lock:
            for table, columns in device_query.INDEXES:
                self._db.table(table).create_index(columns, if_not_exists=True)

    def _has_shadow_reports(self) -> bool:
        return "shadow_reports" in self._db.table_names()

    def query_devices(self, *, query: device_query.DeviceQuery,
                      now: float | None = None) -> tuple[list[Row], int]:
        """One page of devices matching ``query`` (filters, search, sort) and the total."""
        now = time.time() if now is None else now
        with self._lock:
            rows, total = device_query.select_devices(
                self._db.conn, query, now=now, has_shadow=self._has_shadow_reports())
        return [_decode("devices", r) for r in rows], total

    def device_window_stats(self, *, device_ids: list[str], since: float) -> dict[str, Row]:
        """Inferences, errors and merged latency percentiles per device since ``since``."""
        with self._lock:
            return device_query.window_stats(self._db.conn, device_ids, since=since)

    def fleet_overview(self, *, now: float | None = None) -> Row:
        """Status and trouble counts and the active-bundle distribution of the fleet."""
        now = time.time() if now is None else now
        with self._lock:
            out = device_query.overview_counts(self._db.conn, now=now,
                                               has_shadow=self._has_shadow_reports())
            out.update(device_query.facets(self._db.conn))
            return out

    def device_facets(self) -> dict[str, list[str]]:
        """Groups, delegates and bundle names present in the fleet (filter drop-downs)."""
        with self._lock:
            return device_query.facets(self._db.conn)

    def drifted_devices(self, *, device_ids: list[str], now: float | None = None) -> set[str]:
        """The devices among ``device_ids`` in drift trouble (as ``trouble=drift``)."""
        now = time.time() if now is None else now
        with self._lock:
            if not self._has_shadow_reports():
                return set()
            return device_query.drifted(self._db.conn, device_ids,
                                        since=now - device_query.DRIFT_WINDOW_S)

    def device_drift_series(self, *, device_id: str, limit: int = 300) -> list[Row]:
        """PSI per input from one device's shadow reports, oldest first: [{ts, psi: {}}]."""
        with self._lock:
            if not self._has_shadow_reports():
                return []
            rows = self._db.conn.execute(
                "SELECT ts, json_extract(data, '$.drift') FROM shadow_reports "
                "WHERE device_id = ? ORDER BY seq DESC LIMIT ?", [device_id, limit]).fetchall()
        out = []
        for ts, drift in reversed(rows):
            inputs = json.loads(drift) if drift else {}
            out.append({"ts": float(ts), "psi": {name: float(d["psi"])
                                                 for name, d in inputs.items()}})
        return out

    def device_cursor(self, *, device_id: str) -> str:
        """Changes when this one device's row, telemetry or events change (primary-key
        lookups only): the device page's live updates poll it."""
        with self._lock:
            conn = self._db.conn
            row = conn.execute("SELECT online, last_seen, last_issued_seq, state FROM devices "
                               "WHERE id = ?", [device_id]).fetchone()
            tel = conn.execute("SELECT max(seq) FROM telemetry WHERE device_id = ?",
                               [device_id]).fetchone()[0]
            ev = conn.execute("SELECT max(seq) FROM events WHERE device_id = ?",
                              [device_id]).fetchone()[0]
        state = hashlib.sha256(str(row[3]).encode()).hexdigest()[:16] if row else ""
        head = f"{row[0]}.{row[1]}.{row[2]}" if row else "none"
        return f"{head}.{state}.{tel}.{ev}"

    def change_cursor(self) -> str:
        """Changes whenever the registry file is written, by this connection (total_changes)
        or another one (``PRAGMA data_version``): the console's live updates poll it."""
        with self._lock:
            version = self._db.conn.execute("PRAGMA data_version").fetchone()[0]
            return f"{version}.{self._db.conn.total_changes}"

    # -- helpers ------------------------------------------------------------------------
    def _get(self, table: str, pk: Any) -> Row | None:
        try:
            return dict(self._db.table(table).get(pk))
        except sqlite_utils.db.NotFoundError:
            return None
