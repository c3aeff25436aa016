"""Chart specs for a rollout's console pages, in the format ``static/charts.js`` draws with
the vendored uPlot: shadow agreement, latency and drift over the rollout, the rollout's
progress over time, and each sequential gate's interval over time with its decision marked.
Pure: store rows in, specs (plain dicts, embedded as JSON in the page) out."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from fleet_server.rollouts.metrics import _p95, _weighted_mean

Spec = dict[str, Any]

MAX_POINTS = 120
"""Shadow reports are grouped into at most this many time buckets per chart."""
STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)


def bucket_step(span_s: float) -> int:
    """The smallest step (seconds) from ``STEPS_S`` that keeps ``span_s`` in MAX_POINTS."""
    return next((s for s in STEPS_S if span_s / s < MAX_POINTS), STEPS_S[-1])


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _agreement(reports: list[dict[str, Any]]) -> float | None:
    return _weighted_mean([(float(r["top1_agreement"]), float(r.get("samples") or 0))
                           for r in reports if r.get("top1_agreement") is not None])


def shadow_over_time(rows: list[dict[str, Any]],
                     gates: dict[str, Any]) -> tuple[int, dict[str, Spec]]:
    """The rollout's shadow reports (``store.shadow_reports`` rows: ts, device_id, data) per
    time bucket: agreement weighted by samples as the gate weighs it, and the lowest device's;
    candidate/active p95 latency (ratio and ms); output differences; PSI per input. ``gates``
    (the first shadow stage's) give the lines drawn. Returns (bucket step in s, specs)."""
    step = bucket_step(max((r["ts"] for r in rows), default=0.0)
                       - min((r["ts"] for r in rows), default=0.0))
    buckets: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        buckets[math.floor(float(r["ts"]) / step) * step].append(
            {**r["data"], "device_id": r["device_id"]})
    xs = sorted(buckets)
    cols: dict[str, list[float | None]] = defaultdict(list)
    inputs = sorted({name for b in buckets.values() for r in b for name in (r.get("drift") or {})})
    for x in xs:
        b = buckets[x]
        per_device: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in b:
            per_device[r["device_id"]].append(r)
        device_agreement = [a for rs in per_device.values() if (a := _agreement(rs)) is not None]
        pairs = [(c, a) for r in b if (c := _p95(r.get("latency_ms_candidate"))) is not None
                 and (a := _p95(r.get("latency_ms_active")))]
        cols["agreement"].append(_agreement(b))
        cols["lowest"].append(min(device_agreement, default=None))
        cols["active"].append(_mean([a for _, a in pairs]))
        cols["candidate"].append(_mean([c for c, _ in pairs]))
        cols["ratio"].append(statistics.fmean(c for c, _ in pairs)
                             / statistics.fmean(a for _, a in pairs) if pairs else None)
        cols["delta"].append(_mean([float(r["score_delta_mean"]) for r in b
                                    if r.get("score_delta_mean") is not None]))
        cols["mae"].append(_mean([float(r["mae"]) for r in b if r.get("mae") is not None]))
        for name in inputs:
            cols["psi " + name].append(_mean([
                float(d["psi"]) for r in b
                if isinstance(d := (r.get("drift") or {}).get(name), dict)
                and isinstance(d.get("psi"), int | float)]))

    def spec(title: str, unit: str, series: dict[str, str], **extra: Any) -> Spec:
        return {"title": title, "unit": unit, "x": xs, **extra,
                "series": [{"label": label, "values": cols[key]} for key, label in series.items()]}

    agreement_line = gates.get("min_agreement")
    ratio_line = gates.get("max_latency_ratio")
    return step, {
        "agreement": spec("Top-1 agreement, candidate vs active", "rate",
                          {"agreement": "all shadow devices", "lowest": "lowest device"},
                          yrange=[0, 1], lines=[{"label": "min_agreement gate",
                                                 "value": agreement_line}]
                          if agreement_line is not None else []),
        "ratio": spec("Latency ratio, candidate / active p95", "ratio", {"ratio": "p95 ratio"},
                      lines=[{"label": "max_latency_ratio gate", "value": ratio_line}]
                      if ratio_line is not None else []),
        "latency": spec("Latency p95, active and candidate", "ms",
                        {"active": "active p95", "candidate": "candidate p95"}),
        "errors": spec("Output differences per report", "score",
                       {"delta": "score delta", "mae": "mean abs error"}),
        "drift": spec("Input drift: PSI per input", "PSI",
                      {"psi " + n: n for n in inputs}, threshold=0.2),
    }


def progress_over_time(decisions: list[dict[str, Any]], plan: dict[str, Any]) -> Spec:
    """The share of the target in the rollout's current stage after each decision (a step
    line): the next stage's share after an advance, none after a rollback or an abort."""
    stages = plan["stages"]
    xs: list[float] = []
    shares: list[float | None] = []
    notes: list[str] = []
    for d in decisions:
        idx = min(int(d["stage_index"]), len(stages) - 1)
        if d["action"] in ("advance", "promote") and idx + 1 < len(stages):
            idx += 1
        share = 0.0 if d["action"] in ("rollback", "abort") else float(stages[idx]["percent"])
        xs.append(float(d["ts"]))
        shares.append(share)
        notes.append(f"{d['action']}: {d['reason']}"[:120])
    return {"title": "Rollout progress", "unit": "% of target", "x": xs, "notes": notes,
            "yrange": [0, 100],
            "series": [{"label": "share in current stage", "values": shares, "stepped": True}]}


def interval_over_time(rows: list[dict[str, Any]], *, gate: str) -> Spec:
    """One sequential gate's stored intervals (``store.gate_history`` rows of one stage) over
    time: the band between lower and upper, the estimate, the halt and promote lines, and a
    marker when it decided (the first row whose decision is not ``continue``)."""
    last = rows[-1]
    hi = 4.0 if gate.startswith("latency_ratio_p95") else 1.0
    lo = -hi if gate.endswith("_vs_control") else 0.0  # differences can be negative
    # zoom the y axis onto the lines and the latest interval, so a narrow band stays visible
    focus = [float(last[k]) for k in ("halt", "promote", "lower", "upper")]
    pad = (max(focus) - min(focus)) * 0.5 or 0.01
    decided = next((h for h in rows if h["decision"] != "continue"), None)
    return {
        "title": f"{gate} interval", "x": [float(h["ts"]) for h in rows],
        "unit": "ratio" if gate.startswith("latency_ratio") else "rate",
        "yrange": [max(lo, min(focus) - pad), min(hi, max(focus) + pad)],
        "notes": [f"after {h['n']:g} samples: {h['decision']}" for h in rows],
        "series": [{"label": "upper", "values": [float(h["upper"]) for h in rows]},
                   {"label": "lower", "values": [float(h["lower"]) for h in rows]},
                   {"label": "estimate", "values": [None if h["estimate"] is None
                                                    else float(h["estimate"]) for h in rows]}],
        "bands": [[0, 1]],
        "lines": [{"label": "halt", "value": float(last["halt"])},
                  {"label": "promote", "value": float(last["promote"])}],
        "markers": [{"x": float(decided["ts"]), "label": f"decided {decided['decision']}"}]
        if decided else [],
    }
