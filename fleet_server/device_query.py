"""Device-list queries for 10,000 devices: filters, search, sort and pages in SQL.

``DeviceQuery`` validates what an operator (console, REST, CLI) asks for; ``select_devices``,
``window_stats`` and ``overview_counts`` run it on the registry's SQLite connection. Every
filter is a plain ``WHERE`` term on ``devices`` (indexed columns, or ``json_extract`` of the
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

import sqlite3
from dataclasses import dataclass
from typing import Any

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

_INSTALL_STATE = "json_extract(d.state, '$.install.state')"
_EXEC = "json_extract(d.state, '$.active.execution.{}')"
_TROUBLE_SQL = {
    "failed": f"{_INSTALL_STATE} = 'failed'",
    "rolled_back": f"{_INSTALL_STATE} = 'rolled_back'",
    "fallback": f"({_EXEC.format('fallback')} = 1 OR ({_EXEC.format('override')} IS NOT NULL "
                f"AND {_EXEC.format('override.honoured')} = 0))",
    "drift": ("EXISTS (SELECT 1 FROM shadow_reports s, json_each(s.data, '$.drift') j "
              "WHERE s.device_id = d.id AND s.received_at >= :drift_since "
              "AND json_extract(j.value, '$.drifted') = 1)"),
}
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


def _where(query: DeviceQuery, has_shadow: bool) -> tuple[str, dict[str, Any]]:
    terms: list[str] = []
    args: dict[str, Any] = {}
    if query.q:
        terms.append("d.id LIKE :q ESCAPE '\\'")
        args["q"] = "%" + query.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
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
    elif query.bundle:
        terms.append("d.active_bundle >= :lo AND d.active_bundle < :hi")  # index range
        args["lo"], args["hi"] = f"{query.bundle}@", f"{query.bundle}A"  # 'A' follows '@'
    elif query.version:
        terms.append("d.active_bundle LIKE :ver ESCAPE '\\'")
        args["ver"] = "%@" + query.version.replace("\\", "\\\\").replace("%", "\\%") \
            .replace("_", "\\_")
    if query.delegate:
        terms.append("d.delegate = :delegate")
        args["delegate"] = query.delegate
    if query.trouble:
        kinds = [k for k in _TROUBLE_SQL if k != "drift" or has_shadow] \
            if query.trouble == "any" else [query.trouble]
        if query.trouble == "drift" and not has_shadow:
            terms.append("0")
        else:
            terms.append("(" + " OR ".join(_TROUBLE_SQL[k] for k in kinds) + ")")
    return (" WHERE " + " AND ".join(terms)) if terms else "", args


_WINDOW_CTE = """w AS (
  SELECT device_id, sum(n) AS inferences, sum(e) AS errors,
         sum(p50 * n) / sum(CASE WHEN p50 IS NULL THEN 0 ELSE n END) AS p50,
         sum(p95 * n) / sum(CASE WHEN p95 IS NULL THEN 0 ELSE n END) AS p95,
         sum(p99 * n) / sum(CASE WHEN p99 IS NULL THEN 0 ELSE n END) AS p99,
         max(ts) AS last_report
  FROM (SELECT device_id, ts, json_extract(data, '$.inferences') AS n,
               json_extract(data, '$.errors') AS e,
               json_extract(data, '$.latency_ms.p50') AS p50,
               json_extract(data, '$.latency_ms.p95') AS p95,
               json_extract(data, '$.latency_ms.p99') AS p99
        FROM telemetry WHERE ts >= :since {ids})
  GROUP BY device_id)"""

_ORDER = {
    "id": ("d.id", "d.id DESC"),
    "last_seen": ("d.last_seen IS NULL, d.last_seen DESC, d.id",
                  "d.last_seen IS NOT NULL, d.last_seen, d.id"),
    "errors": ("coalesce(w.errors, 0) DESC, d.id", "coalesce(w.errors, 0), d.id"),
    "latency": ("w.p95 IS NULL, w.p95 DESC, d.id", "w.p95 IS NULL, w.p95, d.id"),
}


def _dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


_SORT_CTE = {
    "errors": """w AS (SELECT device_id, sum(json_extract(data, '$.errors')) AS errors
  FROM telemetry WHERE ts >= :since GROUP BY device_id)""",
    "latency": """w AS (SELECT device_id, sum(p * n) / sum(n) AS p95 FROM (
    SELECT device_id, json_extract(data, '$.inferences') AS n,
           json_extract(data, '$.latency_ms.p95') AS p
    FROM telemetry WHERE ts >= :since) WHERE p IS NOT NULL AND n > 0 GROUP BY device_id)""",
}


def select_devices(conn: sqlite3.Connection, query: DeviceQuery, *, now: float,
                   has_shadow: bool) -> tuple[list[dict[str, Any]], int]:
    """One page of device rows (``devices`` columns) and the total matching the filters.
    The page's ids and the total come from one statement over the filter and sort columns
    only (``count(*) OVER ()``); the page's full rows are then read by primary key."""
    where, args = _where(query, has_shadow)
    args["drift_since"] = now - DRIFT_WINDOW_S
    key = query.sort.lstrip("-")
    order = _ORDER[key][1 if query.sort.startswith("-") else 0]
    if not where and key == "id":  # the unfiltered default: the pk order, a cheap count
        total = conn.execute("SELECT count(*) FROM devices").fetchone()[0]
        args["total"] = total
        sql = f"SELECT d.id, :total FROM devices d ORDER BY {order}"  # noqa: S608 - order from the _ORDER whitelist
    else:
        sql = f"SELECT d.id, count(*) OVER () FROM devices d{where} ORDER BY {order}"  # noqa: S608 - only _ORDER/_where fragments, values bound
    if key in _SORT_CTE:
        args["since"] = now - query.window_s
        sql = (f"WITH {_SORT_CTE[key]} SELECT d.id, count(*) OVER () FROM devices d "  # noqa: S608 - _SORT_CTE/_ORDER/_where constants, values bound
               f"LEFT JOIN w ON w.device_id = d.id{where} ORDER BY {order}")
    if query.per_page is not None:
        sql += " LIMIT :limit OFFSET :offset"
        args["limit"], args["offset"] = query.per_page, (query.page - 1) * query.per_page
    page = conn.execute(sql, args).fetchall()
    if page:
        total = page[0][1]
    else:  # a page past the end: count on its own
        total = conn.execute(f"SELECT count(*) FROM devices d{where}", args).fetchone()[0]  # noqa: S608 - only _ORDER/_where fragments, values bound
    ids = [r[0] for r in page]
    rows: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ",".join("?" for _ in chunk)
        for row in _dicts(conn.execute(f"SELECT * FROM devices WHERE id IN ({marks})", chunk)):  # noqa: S608 - only ? placeholders
            rows[row["id"]] = row
    return [rows[i] for i in ids], int(total)


def window_stats(conn: sqlite3.Connection, device_ids: list[str], *, since: float,
                 ) -> dict[str, dict[str, Any]]:
    """Per device: inferences, errors and merged p50/p95/p99 over telemetry since ``since``."""
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(device_ids), 500):
        chunk = device_ids[start:start + 500]
        marks = ",".join("?" for _ in chunk)
        sql = (f"WITH {_WINDOW_CTE.format(ids=f'AND device_id IN ({marks})')} "  # noqa: S608 - _WINDOW_CTE constant and ? placeholders
               "SELECT * FROM w").replace(":since", "?")
        for row in _dicts(conn.execute(sql, [since, *chunk])):
            lat = None if row["p95"] is None else {
                "p50": row["p50"], "p95": row["p95"], "p99": row["p99"]}
            out[row["device_id"]] = {"inferences": int(row["inferences"] or 0),
                                     "errors": int(row["errors"] or 0), "latency_ms": lat,
                                     "last_report": row["last_report"]}
    return out


def drifted(conn: sqlite3.Connection, device_ids: list[str], *, since: float) -> set[str]:
    """Which of these devices flagged a drifted input in a shadow report since ``since``."""
    out: set[str] = set()
    for start in range(0, len(device_ids), 500):
        chunk = device_ids[start:start + 500]
        marks = ",".join("?" for _ in chunk)
        out.update(r[0] for r in conn.execute(
            f"SELECT DISTINCT s.device_id FROM shadow_reports s, json_each(s.data, '$.drift') j "  # noqa: S608 - only ? placeholders
            f"WHERE s.device_id IN ({marks}) AND s.received_at >= ? "
            "AND json_extract(j.value, '$.drifted') = 1", [*chunk, since]))
    return out


def overview_counts(conn: sqlite3.Connection, *, now: float,
                    has_shadow: bool) -> dict[str, Any]:
    """Status counts, trouble counts and the active-bundle distribution of the whole fleet."""
    kinds = [k for k in _TROUBLE_SQL if k != "drift" or has_shadow]
    sums = ", ".join(f"sum(CASE WHEN {_TROUBLE_SQL[k]} THEN 1 ELSE 0 END)" for k in kinds)
    row = conn.execute(
        "SELECT count(*), sum(d.online = 1), sum(d.last_seen IS NULL), "  # noqa: S608 - _TROUBLE_SQL constants only
        f"{sums} FROM devices d", {"drift_since": now - DRIFT_WINDOW_S}).fetchone()
    total, online, never = (int(v or 0) for v in row[:3])
    trouble = {k: int(v or 0) for k, v in zip(kinds, row[3:], strict=True)}
    if not has_shadow:
        trouble["drift"] = 0
    versions: dict[str, dict[str, int]] = {}
    for ref, n in conn.execute("SELECT active_bundle, count(*) FROM devices "
                               "WHERE active_bundle IS NOT NULL GROUP BY active_bundle"):
        name, _, version = str(ref).rpartition("@")
        versions.setdefault(name or str(ref), {})[version] = int(n)
    no_bundle = conn.execute("SELECT count(*) FROM devices WHERE active_bundle IS NULL") \
        .fetchone()[0]
    return {"total": total, "online": online, "never": never,
            "offline": total - online - never, "trouble": trouble,
            "versions": versions, "no_bundle": int(no_bundle)}


def facets(conn: sqlite3.Connection) -> dict[str, list[str]]:
    """Distinct groups, delegates and bundle names, for the filter drop-downs (each column
    is indexed, so each is a walk of an index, not of the table)."""
    refs = [r[0] for r in conn.execute(
        "SELECT DISTINCT active_bundle FROM devices WHERE active_bundle IS NOT NULL")]
    return {
        "bundles": sorted({str(ref).rpartition("@")[0] or str(ref) for ref in refs}),
        "groups": [r[0] for r in conn.execute(
            "SELECT DISTINCT group_name FROM devices ORDER BY group_name")],
        "delegates": [r[0] for r in conn.execute(
            "SELECT DISTINCT delegate FROM devices WHERE delegate IS NOT NULL ORDER BY delegate")],
    }


INDEXES = (("devices", ["group_name"]), ("devices", ["online"]),
           ("devices", ["last_seen"]), ("devices", ["active_bundle"]), ("devices", ["delegate"]),
           ("telemetry", ["ts"]))
"""Added (if missing) when the registry opens: each serves one filter or sort above. Only
``last_seen`` changes with every telemetry report, so each report updates one index more."""
