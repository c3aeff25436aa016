"""The registry: narrow keyword-only functions over the registry database (``fleet_server.db``:
SQLite by default, PostgreSQL with ``--db``).

Every method takes the registry lock, so the REST handlers, the broker's auth plugin and the
MQTT bridge thread may share one instance.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from fleet_server import device_query
from fleet_server.db import Database, open_database
from fleet_server.errors import ConflictError, NotFoundError

Row = dict[str, Any]

KEY_QUERY_IDS = 500
"""Device ids one ``public_keys`` query names (far below either engine's parameter limit)."""


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


FINISHED_INSTALL_STATES = frozenset({"committed", "rolled_back", "failed", "cancelled"})
_FINISHED_SQL = "(" + ", ".join(f"'{s}'" for s in sorted(FINISHED_INSTALL_STATES)) + ")"
_TARGET_STATE_UPDATE = (
    "UPDATE deployment_targets SET state = ?, error = ?, updated_at = ? "  # noqa: S608 - constants
    "WHERE device_id = ? AND instruction_seq = ? "
    "AND NOT (state = ? AND coalesce(error, '') = coalesce(?, '')) "
    f"AND (state NOT IN {_FINISHED_SQL} OR ? IN {_FINISHED_SQL})")


class Registry:
    """Publishers, bundles, enrolment tokens, devices, deployments, telemetry and events."""

    def __init__(self, target: Database | Path | str) -> None:
        self._owned = not isinstance(target, Database)
        self._db = open_database(target)
        self._lock = threading.RLock()
        self.lock = self._lock
        """Held by every method; a caller that wraps several in one transaction (a fenced
        write, ``fleet_server.leader``) takes it first, as the methods do."""
        self._batch = threading.local()  # .summaries while in report_batch()

    def transaction(self) -> AbstractContextManager[Any]:
        """One transaction for the calls of this thread inside the block (``Database``)."""
        return self._db.transaction()

    @contextmanager
    def report_batch(self) -> Iterator[None]:
        """One transaction for an ingest batch (``transaction``), in which each device's
        ``telemetry_summary`` and ``last_seen`` are written once, just before the commit,
        from its newest new report in the batch. The batch's rows of ``devices`` are so
        locked only for its last statement: replicas storing reports of the same devices at
        once do not wait for each other's whole batch (docs/scaling.md)."""
        if getattr(self._batch, "summaries", None) is not None:  # nested: joins the outer
            yield
            return
        summaries: dict[str, tuple[int, str, float]] = {}
        with self._lock, self._db.transaction():
            self._batch.summaries = summaries
            try:
                yield
            finally:
                self._batch.summaries = None
            self._write_summaries(summaries)

    def _write_summaries(self, summaries: dict[str, tuple[int, str, float]]) -> None:
        """In device order, as every replica does: no two batches wait on each other."""
        self._db.update_many("devices", "id", ("telemetry_summary", "last_seen"),
                             [(d, text, seen) for d, (_, text, seen) in sorted(summaries.items())])

    def close(self) -> None:
        with self._lock:
            if self._owned:
                self._db.close()

    # -- publishers -------------------------------------------------------------------
    def add_publisher(self, *, key_id: str, name: str, pem: str) -> Row:
        with self._lock:
            row = {"key_id": key_id, "name": name, "pem": pem, "added_at": time.time()}
            existing = self._get("publishers", key_id)
            if existing is not None:
                return existing
            self._db.insert("publishers", row, ignore_pk=["key_id"])
            return row

    def list_publishers(self) -> list[Row]:
        with self._lock:
            return self._db.select("publishers", order_by="added_at")

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
            self._db.insert("bundles", row)
            return _decode("bundles", row), True

    def list_bundles(self) -> list[Row]:
        with self._lock:
            return [_decode("bundles", r)
                    for r in self._db.select("bundles", order_by="uploaded_at desc")]

    def find_bundle(self, *, key: str) -> Row:
        """A bundle by sha256 id or by ``name@version`` ref."""
        with self._lock:
            row = self._get("bundles", key) or self._by_ref(key)
        if row is None:
            raise NotFoundError(f"no bundle {key}")
        return _decode("bundles", row)

    def _by_ref(self, ref: str) -> Row | None:
        return self._db.get("bundles", {"ref": ref})

    # -- enrolment tokens ---------------------------------------------------------------
    def add_enrolment_token(self, *, token: str, group: str, expires_at: float) -> Row:
        with self._lock:
            row = {"token_hash": hash_secret(token), "group_name": group,
                   "created_at": time.time(), "expires_at": expires_at, "used": 0,
                   "used_by": None}
            self._db.insert("enrolment_tokens", row)
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
            if not self._db.run("UPDATE enrolment_tokens SET used = 1 WHERE token_hash = ? "
                                "AND used = 0", [row["token_hash"]]):
                return None  # another replica consumed it first
            return str(row["group_name"])

    def mark_token_used_by(self, *, token: str, device_id: str) -> None:
        with self._lock:
            self._db.update("enrolment_tokens", {"token_hash": hash_secret(token)},
                            {"used_by": device_id})

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
            self._db.insert("devices", row)
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

    def public_keys(self, *, device_ids: list[str]) -> dict[str, str]:
        """The public key PEM of each of ``device_ids`` that is enrolled and has one, in
        one query per ``KEY_QUERY_IDS`` (the report verifier's batch read). Without the
        registry lock: a read on this thread's own connection, which the ingest worker's
        check thread makes while its store thread holds the lock for a batch transaction
        (it sees the devices committed before the query)."""
        out: dict[str, str] = {}
        for at in range(0, len(device_ids), KEY_QUERY_IDS):
            where, params = self._db.in_list("id", device_ids[at:at + KEY_QUERY_IDS])
            out.update((str(d), str(k)) for d, k in self._db.tuples(
                f"SELECT id, public_key FROM devices WHERE {where} "  # noqa: S608 - placeholders only
                "AND public_key IS NOT NULL", params))
        return out

    def device_secret_hash(self, *, device_id: str) -> str | None:
        with self._lock:
            row = self._get("devices", device_id)
        return None if row is None else str(row["mqtt_secret_hash"])

    def list_devices(self, *, group: str | None = None) -> list[Row]:
        with self._lock:
            if group is None:
                rows = self._db.select("devices", order_by="id")
            else:
                rows = self._db.select("devices", "group_name = ?", [group], order_by="id")
            return [_decode("devices", r) for r in rows]

    def update_device_state(self, *, device_id: str, online: bool, ts: float,
                            state: dict[str, Any], active_bundle: str | None,
                            delegate: str | None) -> None:
        with self._lock:
            self._db.update("devices", {"id": device_id}, {
                "online": int(online), "last_seen": ts, "state": json.dumps(state),
                "active_bundle": active_bundle, "delegate": delegate})

    def touch_device(self, *, device_id: str, ts: float) -> None:
        with self._lock:
            self._db.update("devices", {"id": device_id}, {"last_seen": ts})

    def issue_seq(self, *, device_id: str, sha256: str | None, deployment_id: str) -> int:
        """Reserve the next instruction seq for a device and remember what it asks for."""
        with self._lock:
            seq = self._db.scalar(
                "UPDATE devices SET last_issued_seq = coalesce(last_issued_seq, 0) + 1, "
                "desired_sha = ?, desired_deployment = ? WHERE id = ? RETURNING last_issued_seq",
                [sha256, deployment_id, device_id])
            if seq is None:
                raise NotFoundError(f"no device {device_id}")
            return int(seq)

    def record_instruction(self, *, device_id: str, seq: int, envelope: bytes) -> bool:
        """Log signed instruction ``seq`` and keep it as the device's current one unless a
        later seq was issued since (then False). ``instruction_log``'s key holds one
        instruction per device and seq: a different one under a logged seq is refused
        (``ConflictError``, nothing written); the same one again is accepted."""
        digest = hashlib.sha256(envelope).hexdigest()
        with self._lock, self._db.transaction():
            if not self._db.insert("instruction_log", {
                    "device_id": device_id, "seq": seq, "envelope_sha256": digest,
                    "issued_at": time.time()}, ignore_pk=("device_id", "seq")):
                logged = self._db.scalar("SELECT envelope_sha256 FROM instruction_log "
                                         "WHERE device_id = ? AND seq = ?", [device_id, seq])
                if logged != digest:
                    raise ConflictError(f"device {device_id} already has another signed "
                                        f"instruction under seq {seq}")
            return bool(self._db.run(
                "UPDATE devices SET desired_envelope = ? WHERE id = ? AND last_issued_seq = ?",
                [envelope.decode(), device_id, seq]))

    def prune_instruction_log(self, *, older_than: float) -> int:
        """Forget logged instructions issued before ``older_than``, except each device's
        latest issued seq (the only one a slow replica could still be racing on: an older
        seq is never made current again, ``record_instruction``); rows of devices deleted
        since go too. Returns the rows deleted."""
        with self._lock, self._db.transaction():
            return int(self._db.run(
                "DELETE FROM instruction_log WHERE issued_at < ? AND seq < coalesce("
                "(SELECT d.last_issued_seq FROM devices d WHERE d.id = instruction_log.device_id),"
                " 9223372036854775807)", [older_than]))

    def set_desired_envelope(self, *, device_id: str, envelope: bytes) -> None:
        """Keep the signed instruction so it can be re-published after a broker restart."""
        with self._lock:
            self._db.update("devices", {"id": device_id}, {"desired_envelope": envelope.decode()})

    def desired_envelopes(self) -> list[tuple[str, bytes]]:
        with self._lock:
            rows = self._db.select("devices", "desired_envelope IS NOT NULL",
                                   columns="id, desired_envelope")
            return [(str(r["id"]), str(r["desired_envelope"]).encode()) for r in rows]

    # -- deployments --------------------------------------------------------------------
    def add_deployment(self, *, deployment_id: str, bundle_ref: str, bundle_id: str,
                       target_kind: str, target_value: str, created_by: str) -> Row:
        with self._lock:
            row = {"id": deployment_id, "bundle_ref": bundle_ref, "bundle_id": bundle_id,
                   "target_kind": target_kind, "target_value": target_value,
                   "created_at": time.time(), "created_by": created_by}
            self._db.insert("deployments", row)
            return row

    def next_deployment_id(self) -> str:
        with self._lock:
            return f"dep-{self._db.next_counter('deployments')}"

    def add_deployment_target(self, *, deployment_id: str, device_id: str,
                              instruction_seq: int, state: str = "issued") -> None:
        with self._lock:
            self._db.upsert("deployment_targets", {
                "deployment_id": deployment_id, "device_id": device_id,
                "instruction_seq": instruction_seq, "state": state, "error": None,
                "updated_at": time.time()}, pk=("deployment_id", "device_id"))

    def update_target_state(self, *, device_id: str, instruction_seq: int, state: str,
                            error: str | None) -> bool:
        """Record the install state a device reports for one of its instructions. A finished
        install (committed, failed, rolled back, cancelled) never goes back to an earlier
        step: with several replicas a device's reports are stored by whichever replica the
        broker hands them to, so an earlier step may arrive after the last."""
        with self._lock:
            found = self._db.count("deployment_targets", "device_id = ? AND instruction_seq = ?",
                                   [device_id, instruction_seq])
            if found:  # one statement: the check and the write see the same committed row
                self._db.run(_TARGET_STATE_UPDATE, [state, error, time.time(), device_id,
                                                    instruction_seq, state, error, state])
            return bool(found)

    def list_deployments(self) -> list[Row]:
        with self._lock:
            return [self._with_targets(r)
                    for r in self._db.select("deployments", order_by="created_at desc")]

    def get_deployment(self, *, deployment_id: str) -> Row:
        with self._lock:
            row = self._get("deployments", deployment_id)
            if row is None:
                raise NotFoundError(f"no deployment {deployment_id}")
            return self._with_targets(row)

    def _with_targets(self, row: Row) -> Row:
        out = dict(row)
        out["targets"] = self._db.select("deployment_targets", "deployment_id = ?", [row["id"]],
                                         order_by="device_id")
        return out

    # -- telemetry and events -------------------------------------------------------------
    def add_telemetry(self, *, device_id: str, seq: int, ts: float,
                      data: dict[str, Any]) -> bool:
        """Store one report; False if ``(device_id, seq)`` was already stored (or pruned)."""
        return self.add_telemetry_many([(device_id, seq, ts, data)])[0]

    def add_telemetry_many(self, reports: list[tuple[str, int, float, dict[str, Any]]],
                           ) -> list[bool]:
        """Store ``(device_id, seq, ts, data)`` reports in a few statements whatever their
        number (the ingest worker's batches); for each, whether it is new: False for an
        unknown device, a seq already stored, pruned (``report_floors``) or earlier in
        ``reports``. Each device's ``telemetry_summary`` becomes its newest new report (at
        the end of the ``report_batch`` this runs in, if any)."""
        if not reports:
            return []
        db = self._db
        ids = sorted({r[0] for r in reports})
        with self._lock, db.transaction():
            where, params = db.in_list("id", ids)
            known = {d for (d,) in db.tuples(f"SELECT id FROM devices WHERE {where}", params)}  # noqa: S608 - placeholders only
            where, params = db.in_list("device_id", ids)
            floors = dict(db.tuples(
                "SELECT device_id, seq FROM report_floors "  # noqa: S608 - placeholders only
                f"WHERE tbl = 'telemetry' AND {where}", params))
            texts = [json.dumps(data) for *_, data in reports]
            first: dict[tuple[str, int], tuple[str, int, float, str]] = {}
            for (d, s, ts, _), text in zip(reports, texts, strict=True):
                if d in known and s > floors.get(d, -1):
                    first.setdefault((d, s), (d, s, ts, text))
            rows = sorted(first.values())
            inserted = {(str(d), int(s)) for d, s in db.insert_many(
                "telemetry", ("device_id", "seq", "ts", "data"), rows,
                ignore_pk=("device_id", "seq"), returning=("device_id", "seq"))}
            batch = getattr(self._batch, "summaries", None)
            summaries: dict[str, tuple[int, str, float]] = {} if batch is None else batch
            now, new = time.time(), []
            for (d, s, ts, _), text in zip(reports, texts, strict=True):
                fresh = (d, s) in inserted
                inserted.discard((d, s))  # a second copy in ``reports`` is not new
                new.append(fresh)
                if fresh and s >= summaries.get(d, (-1,))[0]:
                    summaries[d] = (s, text, max(ts, now))
            if batch is None:
                self._write_summaries(summaries)
            return new

    def list_telemetry(self, *, device_id: str, limit: int = 100) -> list[Row]:
        with self._lock:
            return [_decode("telemetry", r) for r in self._db.select(
                "telemetry", "device_id = ?", [device_id], order_by="seq DESC", limit=limit)]

    def add_event(self, *, device_id: str, seq: int, ts: float, kind: str,
                  data: dict[str, Any]) -> bool:
        with self._lock:
            if self._get("devices", device_id) is None:
                return False
            if seq <= self._floor("events", device_id):
                return False
            return bool(self._db.insert("events", {"device_id": device_id, "seq": seq, "ts": ts,
                                                   "kind": kind, "data": json.dumps(data)},
                                        ignore_pk=("device_id", "seq")))

    def list_events(self, *, device_id: str, limit: int = 100) -> list[Row]:
        with self._lock:
            return [_decode("events", r) for r in self._db.select(
                "events", "device_id = ?", [device_id], order_by="seq DESC", limit=limit)]

    def prune_reports(self, *, table: str, keep_rows: int, older_than: float) -> int:
        """Retention of ``telemetry`` or ``events``: per device keep the newest ``keep_rows``
        rows and none with ``ts < older_than``. Returns the rows deleted. The highest pruned
        seq is remembered per device, so a re-sent old report is not stored again."""
        if table not in ("telemetry", "events"):
            raise ValueError(f"no retention for table {table!r}")
        db = self._db
        with self._lock, db.transaction():
            cuts: dict[str, int] = {}
            over = db.tuples(f"SELECT device_id FROM {table} GROUP BY device_id "  # noqa: S608 - table is checked against the whitelist above
                             "HAVING count(*) > ?", [keep_rows])
            for (device_id,) in over:
                cut = db.scalar(f"SELECT seq FROM {table} WHERE device_id = ? "  # noqa: S608 - table is checked against the whitelist above
                                "ORDER BY seq DESC LIMIT 1 OFFSET ?", [device_id, keep_rows])
                cuts[device_id] = int(cut)
            for device_id, old in db.tuples(f"SELECT device_id, max(seq) FROM {table} "  # noqa: S608 - table is checked against the whitelist above
                                            "WHERE ts < ? GROUP BY device_id", [older_than]):
                cuts[device_id] = max(cuts.get(device_id, -1), int(old))
            deleted = 0
            for device_id, cut in cuts.items():
                deleted += db.run(
                    f"DELETE FROM {table} WHERE device_id = ? AND (seq <= ? OR ts < ?)",  # noqa: S608 - table is checked against the whitelist above
                    [device_id, cut, older_than])
                db.run("INSERT INTO report_floors (device_id, tbl, seq) VALUES (?, ?, ?) "
                       "ON CONFLICT (device_id, tbl) DO UPDATE SET seq = CASE WHEN "
                       "report_floors.seq > excluded.seq THEN report_floors.seq "
                       "ELSE excluded.seq END", [device_id, table, cut])
            return deleted

    def count_reports(self, *, table: str, device_id: str) -> int:
        if table not in ("telemetry", "events"):
            raise ValueError(f"no reports table {table!r}")
        with self._lock:
            return self._db.count(table, "device_id = ?", [device_id])

    def _floor(self, table: str, device_id: str) -> int:
        seq = self._db.scalar("SELECT seq FROM report_floors WHERE device_id = ? AND tbl = ?",
                              [device_id, table])
        return -1 if seq is None else int(seq)

    # -- device-list queries (console, REST filters, CLI flags) ---------------------------
    def query_devices(self, *, query: device_query.DeviceQuery,
                      now: float | None = None) -> tuple[list[Row], int]:
        """One page of devices matching ``query`` (filters, search, sort) and the total."""
        now = time.time() if now is None else now
        with self._lock:
            rows, total = device_query.select_devices(self._db, query, now=now)
        return [_decode("devices", r) for r in rows], total

    def device_window_stats(self, *, device_ids: list[str], since: float) -> dict[str, Row]:
        """Inferences, errors and merged latency percentiles per device since ``since``."""
        with self._lock:
            return device_query.window_stats(self._db, device_ids, since=since)

    def fleet_overview(self, *, now: float | None = None) -> Row:
        """Status and trouble counts and the active-bundle distribution of the fleet."""
        now = time.time() if now is None else now
        with self._lock:
            out = device_query.overview_counts(self._db, now=now)
            out.update(device_query.facets(self._db))
            return out

    def device_facets(self) -> dict[str, list[str]]:
        """Groups, delegates and bundle names present in the fleet (filter drop-downs)."""
        with self._lock:
            return device_query.facets(self._db)

    def drifted_devices(self, *, device_ids: list[str], now: float | None = None) -> set[str]:
        """The devices among ``device_ids`` in drift trouble (as ``trouble=drift``)."""
        now = time.time() if now is None else now
        with self._lock:
            return device_query.drifted(self._db, device_ids,
                                        since=now - device_query.DRIFT_WINDOW_S)

    def device_drift_series(self, *, device_id: str, limit: int = 300) -> list[Row]:
        """PSI per input from one device's shadow reports, oldest first: [{ts, psi: {}}]."""
        with self._lock:
            rows = self._db.tuples(
                f"SELECT ts, {self._db.json_text('data', 'drift')} FROM shadow_reports "  # noqa: S608 - a constant JSON path expression
                "WHERE device_id = ? ORDER BY seq DESC LIMIT ?", [device_id, limit])
        out = []
        for ts, drift in reversed(rows):
            inputs = json.loads(drift) if drift else {}
            out.append({"ts": float(ts), "psi": {name: float(d["psi"])
                                                 for name, d in inputs.items()}})
        return out

    def device_cursor(self, *, device_id: str) -> str:
        """Changes when this one device's row, telemetry or events change (primary-key
        lookups only): the device page's live updates poll it."""
        with self._lock, self._db.transaction():
            db = self._db
            row = db.first("SELECT online, last_seen, last_issued_seq, state FROM devices "
                           "WHERE id = ?", [device_id])
            tel = db.scalar("SELECT max(seq) FROM telemetry WHERE device_id = ?", [device_id])
            ev = db.scalar("SELECT max(seq) FROM events WHERE device_id = ?", [device_id])
        state = hashlib.sha256(str(row[3]).encode()).hexdigest()[:16] if row else ""
        head = f"{row[0]}.{row[1]}.{row[2]}" if row else "none"
        return f"{head}.{state}.{tel}.{ev}"

    def change_cursor(self) -> str:
        """Changes whenever the registry is written, by this process or another one: the
        console's live updates poll it (``Database.change_marker``)."""
        with self._lock:
            return self._db.change_marker()

    # -- helpers ------------------------------------------------------------------------
    def _get(self, table: str, pk: Any) -> Row | None:
        key = {"publishers": "key_id", "enrolment_tokens": "token_hash"}.get(table, "id")
        return self._db.get(table, {key: pk})
