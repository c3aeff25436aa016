"""Device-list queries for 10,000 devices: filters, search, sort and pages in SQL.

``DeviceQuery`` validates what an operator (console, REST, CLI) asks for; ``select_devices``,
``window_stats`` and ``overview_counts`` run it on the registry database (SQLite or
PostgreSQL, ``fleet_server.db``). Every
filter is a plain ``WHERE`` term on ``devices`` (indexed columns, or a JSON path of the
stored state for the trouble kinds); window statistics come from the ``telemetry`` table
through its ``ts`` index.

Latency over a window (``WINDOW_S``, 15 minutes by default): devices report p50/p95/p99 per
telemetry window, not histograms, so the window figure is the request-count-weighted mean
of each reported window's percentile (``sum(p * inferences) / sum(inferences)`` over the
windows with at least one inference). Idle windows do not blank a device that answered
requests a few minutes ago. This approximates the true percentile of the merged requests;
it is exact when every window has the same distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleet_server.db import Database
from fleet_server.errors import InvalidInputError

WINDOW_S = 900.0
"""Default window for latency percentiles, errors and inferences on the devices list."""

LATENCY_METHOD = ("request-count-weighted mean of the per-window percentiles the device "
                  "reported (windows with no inferences are skipped)")

DRIFT_WINDOW_S = 3600.0
"""A device is in drift trouble when a shadow report in the last hour flags an input."""

STATUSES = ("online", "offline", "never")
TROUBLES = ("any", "failed", "rolled_back", "fallback", "drift")
SORTS = ("id", "last_seen", "errors", "latency")
MAX_PER_PAGE = 1000

def _trouble_sql(db: Database) -> dict[str, str]:
    """The SQL term of each trouble kind, in the database's JSON dialect."""
    install = db.json_text("d.state", "install.state")
    ex = "active.execution."
    if db.dialect == "postgresql":
        drifted = ("EXISTS (SELECT 1 FROM shadow_reports s, jsonb_each(CASE WHEN "
                   "jsonb_typeof(s.data::jsonb -> 'drift') = 'object' THEN s.data::jsonb -> 'drift' "
                   "ELSE '{}'::jsonb END) j WHERE s.device_id = d.id AND s.received_at >= "
                   ":drift_since AND (j.value ->> 'drifted') IN ('true', '1'))")
    else:
        drifted = ("EXISTS (SELECT 1 FROM shadow_reports s, json_each(s.data, '$.drift') j "
                   "WHERE s.device_id = d.id AND s.received_at >= :drift_since "
                   "AND json_extract(j.value, '$.drifted') = 1)")
    return {
        "failed": f"{install} = 'failed'",
        "rolled_back": f"{install} = 'rolled_back'",
        "fallback": (f"({db.json_true('d.state', ex + 'fallback')} OR "
                     f"({db.json_text('d.state', ex + 'override')} IS NOT NULL AND "
                     f"{db.json_false('d.state', ex + 'override.honoured')}))"),
        "drift": drifted,
    }


TROUBLE_KINDS = ("failed", "rolled_back", "fallback", "drift")
TROUBLE_LABELS = {
    "failed": "failed installs", "rolled_back": "rolled back (crash loop or health gate)",
    "fallback": "silent delegate fallback", "drift": "input drift alarms",
}


def _text(value: str | None, name: str, max_len: int = 200) -> str | None:
    if value is None or value.strip() == "":
        return None
    if len(value) > max_len or any(ord(c) < 32 for c in value):
        raise InvalidInputError(f"{name} must be printable text of at most {max_len} characters")
    return value.strip()


@dataclass(frozen=True)
class DeviceQuery:
    """What to list. Empty strings mean "no filter"; bad values raise ``InvalidInputError``."""

    q: str | None = None
    group: str | None = None
    status: str | None = None
    bundle: str | None = None
    version: str | None = None
    delegate: str | None = None
    trouble: str | None = None
    sort: str = "id"
    page: int = 1
    per_page: int | None = 50
    window_s: float = WINDOW_S

    def __post_init__(self) -> None:
        for name in ("q", "group", "bundle", "version", "delegate"):
            object.__setattr__(self, name, _text(getattr(self, name), name))
        for name, allowed in (("status", STATUSES), ("trouble", TROUBLES)):
            value = _text(getattr(self, name), name)
            if value is not None and value not in allowed:
                raise InvalidInputError(f"{name} must be one of {', '.join(allowed)}, "
                                        f"got {value!r}")
            object.__setattr__(self, name, value)
        sort = (self.sort or "id").strip()
        if sort.lstrip("-") not in SORTS:
            raise InvalidInputError(f"sort must be one of {', '.join(SORTS)} (prefix - to "
                                    f"reverse), got {sort!r}")
        object.__setattr__(self, "sort", sort)
        if isinstance(self.page, bool) or not isinstance(self.page, int) or self.page < 1:
            raise InvalidInputError(f"page must be an integer >= 1, got {self.page!r}")
        if self.per_page is not None and (
                isinstance(self.per_page, bool) or not isinstance(self.per_page, int)
                or not 1 <= self.per_page <= MAX_PER_PAGE):
            raise InvalidInputError(f"per_page must be an integer from 1 to {MAX_PER_PAGE}, "
                                    f"got {self.per_page!r}")
        if not 60.0 <= float(self.window_s) <= 7 * 86400.0:
            raise InvalidInputError("window_s must be between 60 and 604800 seconds")

    def params(self) -> dict[str, str]:
        """The non-default fields as query-string parameters (for links and pagers)."""
        out = {k: str(getattr(self, k)) for k in ("q", "group", "status", "bundle", "version",
                                                 "delegate", "trouble")
               if getattr(self, k) is not None}
        if self.sort != "id":
            out["sort"] = self.sort
        return out


def _where(db: Database, query: DeviceQuery) -> tuple[str, dict[str, Any]]:
    terms: list[str] = []
    args: dict[str, Any] = {}
    if query.q:  # case-insensitive on both engines, as SQLite's LIKE is
        terms.append("lower(d.id) LIKE :q ESCAPE '\\'")
        args["q"] = "%" + query.q.lower().replace("\\", "\\\\").replace("%", "\\%") \
            .replace("_", "\\_") + "%"
    if query.group:
        terms.append("d.group_name = :group")
        args["group"] = query.group
    if query.status == "online":
        terms.append("d.online = 1")
    elif query.status == "offline":
        terms.append("d.online = 0 AND d.last_seen IS NOT NULL")
    elif query.status == "never":
        terms.append("d.last_seen IS NULL")
    if query.bundle and query.version:
        terms.append("d.active_bundle = :ref")
        args["ref"] = f"{query.bundle}@{query.version}"
    elif query.bundle:  # an index range; byte order on PostgreSQL whatever its collation
        col = 'd.active_bundle COLLATE "C"' if db.dialect == "postgresql" else "d.active_bundle"
        terms.append(f"{col} >= :lo AND {col} < :hi")
        args["lo"], args["hi"] = f"{query.bundle}@", f"{query.bundle}A"  # 'A' follows '@'
    elif query.version:
        terms.append("lower(d.active_bundle) LIKE :ver ESCAPE '\\'")
        args["ver"] = "%@" + query.version.lower().replace("\\", "\\\\") \
            .replace("%", "\\%").replace("_", "\\_")
    if query.delegate:
        terms.append("d.delegate = :delegate")
        args["delegate"] = query.delegate
    if query.trouble:
        trouble = _trouble_sql(db)
        kinds = TROUBLE_KINDS if query.trouble == "any" else (query.trouble,)
        terms.append("(" + " OR ".join(trouble[k] for k in kinds) + ")")
    return (" WHERE " + " AND ".join(terms)) if terms else "", args


def _window_cte(db: Database, ids: str) -> str:
    n, e = db.json_number("data", "inferences"), db.json_number("data", "errors")
    p50, p95, p99 = (db.json_number("data", f"latency_ms.{p}") for p in ("p50", "p95", "p99"))
    return f"""w AS (
  SELECT device_id, sum(n) AS inferences, sum(e) AS errors,
         sum(p50 * n) / nullif(sum(CASE WHEN p50 IS NULL THEN 0 ELSE n END), 0) AS p50,
         sum(p95 * n) / nullif(sum(CASE WHEN p95 IS NULL THEN 0 ELSE n END), 0) AS p95,
         sum(p99 * n) / nullif(sum(CASE WHEN p99 IS NULL THEN 0 ELSE n END), 0) AS p99,
         max(ts) AS last_report
  FROM (SELECT device_id, ts, {n} AS n, {e} AS e, {p50} AS p50, {p95} AS p95, {p99} AS p99
        FROM {_telemetry(db, ids)}) t
  GROUP BY device_id)"""  # noqa: S608 - constant JSON path expressions and placeholders


def _telemetry(db: Database, ids: str = "") -> str:
    """Telemetry since ``:since`` with ``data`` as a JSON document: PostgreSQL parses each
    row's text once here, not once per path the query reads."""
    return (f"(SELECT device_id, ts, {db.json_doc('data')} AS data FROM telemetry "  # noqa: S608 - constant expressions and placeholders
            f"WHERE ts >= :since {ids}) tel")


_ORDER = {
    "id": ("d.id", "d.id DESC"),
    "last_seen": ("d.last_seen IS NULL, d.last_seen DESC, d.id",
                  "d.last_seen IS NOT NULL, d.last_seen, d.id"),
    "errors": ("coalesce(w.errors, 0) DESC, d.id", "coalesce(w.errors, 0), d.id"),
    "latency": ("w.p95 IS NULL, w.p95 DESC, d.id", "w.p95 IS NULL, w.p95, d.id"),
}


def _sort_cte(db: Database, key: str) -> str:
    if key == "errors":
        return (f"w AS (SELECT device_id, sum({db.json_number('data', 'errors')}) AS errors "  # noqa: S608 - a constant JSON path expression
                f"FROM {_telemetry(db)} GROUP BY device_id)")
    return f"""w AS (SELECT device_id, sum(p * n) / nullif(sum(n), 0) AS p95 FROM (
    SELECT device_id, {db.json_number('data', 'inferences')} AS n,
           {db.json_number('data', 'latency_ms.p95')} AS p
    FROM {_telemetry(db)}) t WHERE p IS NOT NULL AND n > 0 GROUP BY device_id)"""  # noqa: S608 - constant JSON path expressions


def select_devices(db: Database, query: DeviceQuery, *,
                   now: float) -> tuple[list[dict[str, Any]], int]:
    """One page of device rows (``devices`` columns) and the total matching the filters.
    The page's ids and the total come from one statement over the filter and sort columns
    only (``count(*) OVER ()``); the page's full rows are then read by primary key."""
    where, args = _where(db, query)
    if query.trouble in ("any", "drift"):
        args["drift_since"] = now - DRIFT_WINDOW_S
    key = query.sort.lstrip("-")
    order = _ORDER[key][1 if query.sort.startswith("-") else 0]
    total: int | None = None
    if not where and key == "id":  # the unfiltered default: the pk order, a cheap count
        total = db.count("devices")
        sql = f"SELECT d.id, 0 AS n FROM devices d ORDER BY {order}"  # noqa: S608 - order from the _ORDER whitelist
    else:
        sql = f"SELECT d.id, count(*) OVER () AS n FROM devices d{where} ORDER BY {order}"  # noqa: S608 - only _ORDER/_where fragments, values bound
    if key in ("errors", "latency"):
        args["since"] = now - query.window_s
        sql = (f"WITH {_sort_cte(db, key)} SELECT d.id, count(*) OVER () AS n FROM devices d "  # noqa: S608 - _sort_cte/_ORDER/_where constants, values bound
               f"LEFT JOIN w ON w.device_id = d.id{where} ORDER BY {order}")
        total = None
    if query.per_page is not None:
        sql += " LIMIT :limit OFFSET :offset"
        args["limit"], args["offset"] = query.per_page, (query.page - 1) * query.per_page
    page = db.tuples(sql, args)
    if total is None:
        if page:
            total = int(page[0][1])
        else:  # a page past the end: count on its own
            total = int(db.scalar(f"SELECT count(*) FROM devices d{where}", args))  # noqa: S608 - only _where fragments, values bound
    ids = [r[0] for r in page]
    rows: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ",".join("?" for _ in chunk)
        for row in db.rows(f"SELECT * FROM devices WHERE id IN ({marks})", chunk):  # noqa: S608 - only ? placeholders
            rows[row["id"]] = row
    return [rows[i] for i in ids], int(total)


def window_stats(db: Database, device_ids: list[str], *, since: float,
                 ) -> dict[str, dict[str, Any]]:
    """Per device: inferences, errors and merged p50/p95/p99 over telemetry since ``since``."""
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(device_ids), 500):
        chunk = device_ids[start:start + 500]
        marks = ",".join(f":i{k}" for k in range(len(chunk)))
        sql = f"WITH {_window_cte(db, f'AND device_id IN ({marks})')} SELECT * FROM w"  # noqa: S608 - _window_cte constant and bound placeholders
        for row in db.rows(sql, {"since": since, **{f"i{k}": v for k, v in enumerate(chunk)}}):
            lat = None if row["p95"] is None else {
                "p50": row["p50"], "p95": row["p95"], "p99": row["p99"]}
            out[row["device_id"]] = {"inferences": int(row["inferences"] or 0),
                                     "errors": int(row["errors"] or 0), "latency_ms": lat,
                                     "last_report": row["last_report"]}
    return out


def drifted(db: Database, device_ids: list[str], *, since: float) -> set[str]:
    """Which of these devices flagged a drifted input in a shadow report since ``since``."""
    out: set[str] = set()
    term = _trouble_sql(db)["drift"]
    for start in range(0, len(device_ids), 500):
        chunk = device_ids[start:start + 500]
        marks = ",".join(f":i{k}" for k in range(len(chunk)))
        out.update(r[0] for r in db.tuples(
            f"SELECT d.id FROM devices d WHERE d.id IN ({marks}) AND {term}",  # noqa: S608 - bound placeholders and a constant term
            {"drift_since": since, **{f"i{k}": v for k, v in enumerate(chunk)}}))
    return out


def overview_counts(db: Database, *, now: float) -> dict[str, Any]:
    """Status counts, trouble counts and the active-bundle distribution of the whole fleet."""
    trouble_sql = _trouble_sql(db)
    sums = ", ".join(f"sum(CASE WHEN {trouble_sql[k]} THEN 1 ELSE 0 END)" for k in TROUBLE_KINDS)
    row = db.first(
        "SELECT count(*), sum(CASE WHEN d.online = 1 THEN 1 ELSE 0 END), "  # noqa: S608 - _trouble_sql constants only
        f"sum(CASE WHEN d.last_seen IS NULL THEN 1 ELSE 0 END), {sums} FROM devices d",
        {"drift_since": now - DRIFT_WINDOW_S})
    if row is None:
        raise RuntimeError("an aggregate without a row")
    total, online, never = (int(v or 0) for v in row[:3])
    trouble = {k: int(v or 0) for k, v in zip(TROUBLE_KINDS, row[3:], strict=True)}
    versions: dict[str, dict[str, int]] = {}
    for ref, n in db.tuples("SELECT active_bundle, count(*) FROM devices "
                            "WHERE active_bundle IS NOT NULL GROUP BY active_bundle"):
        name, _, version = str(ref).rpartition("@")
        versions.setdefault(name or str(ref), {})[version] = int(n)
    no_bundle = db.count("devices", "active_bundle IS NULL")
    return {"total": total, "online": online, "never": never,
            "offline": total - online - never, "trouble": trouble,
            "versions": versions, "no_bundle": int(no_bundle)}


def facets(db: Database) -> dict[str, list[str]]:
    """Distinct groups, delegates and bundle names, for the filter drop-downs (each column
    is indexed, so each is a walk of an index, not of the table)."""
    refs = [r[0] for r in db.tuples(
        "SELECT DISTINCT active_bundle FROM devices WHERE active_bundle IS NOT NULL")]
    return {
        "bundles": sorted({str(ref).rpartition("@")[0] or str(ref) for ref in refs}),
        "groups": [r[0] for r in db.tuples(
            "SELECT DISTINCT group_name FROM devices ORDER BY group_name")],
        "delegates": [r[0] for r in db.tuples(
            "SELECT DISTINCT delegate FROM devices WHERE delegate IS NOT NULL ORDER BY delegate")],
    }
