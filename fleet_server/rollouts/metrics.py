"""What a stage's cohort measured, read from the registry (shadow reports, telemetry,
install states) and reduced to a ``StageMetrics`` value for the pure policy; plus the
active-vs-candidate comparison the console draws.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from fleet_server.rollout_store import RolloutStore, Row
from fleet_server.rollouts.plan import SEQUENTIAL_METRICS, Stage
from fleet_server.rollouts.policy import StageMetrics

BASELINE_WINDOW_S = 600.0
"""Telemetry of the previous bundle this long before a rollout began counts as baseline."""

DONE_STATES = ("committed",)
FAILED_STATES = ("failed", "rolled_back")


def _p95(d: dict[str, Any] | None) -> float | None:
    if not isinstance(d, dict):
        return None
    value = d.get("p95")
    return float(value) if isinstance(value, int | float) else None


def _weighted_mean(pairs: list[tuple[float, float]]) -> float | None:
    total = sum(w for _, w in pairs)
    if total <= 0:
        return None
    return sum(v * w for v, w in pairs) / total


def _clipped_ratios(ratios: list[float]) -> list[float]:
    """Per-report latency ratios mapped onto [0, 1] (clipped at the metric's largest value)
    for the confidence sequence."""
    cap = SEQUENTIAL_METRICS["latency_ratio"][1]
    return [min(max(r, 0.0), cap) / cap for r in ratios]


def stage_metrics(store: RolloutStore, rollout: Row, stage: Stage,
                  cohort: list[str], now: float) -> StageMetrics:
    """Measure ``cohort`` (devices given the stage's role) since the stage started."""
    started = float(rollout["stage_started_at"])
    devices = store.rollout_devices(rollout_id=rollout["id"])
    if stage.kind == "shadow":
        m = _shadow(store, rollout, cohort, started)
    else:
        m = _canary(store, rollout, devices, cohort, started)
        control = [d for d, row in devices.items() if row["role"] == "control"]
        if control:
            _add_control(m, store, rollout, control, started)
    reported: set[str] = m.pop("reported")
    late = [d for d in cohort if d not in reported and d in devices
            and now - float(devices[d]["assigned_at"] or started) >= stage.deadline_s]
    if late:
        store.set_excluded(rollout_id=rollout["id"], device_ids=late)
    return StageMetrics(cohort=len(cohort), reporting=len(reported), excluded=len(late), **m)


def _shadow(store: RolloutStore, rollout: Row, cohort: list[str],
            since: float) -> dict[str, Any]:
    reports = [r["data"] for r in store.shadow_reports(
        candidate_sha256=rollout["bundle_id"], device_ids=cohort, since=since)]
    samples = sum(int(r.get("samples") or 0) for r in reports)
    errors = sum(int(r.get("candidate_errors") or 0) for r in reports)
    window_s = sum(float(r.get("window_s") or 0.0) for r in reports)
    agreement = _weighted_mean([(float(r["top1_agreement"]), float(r.get("samples") or 0))
                                for r in reports if r.get("top1_agreement") is not None])
    cand = [_p95(r.get("latency_ms_candidate")) for r in reports]
    act = [_p95(r.get("latency_ms_active")) for r in reports]
    pairs = [(c, a) for c, a in zip(cand, act, strict=True) if c is not None and a]
    ratio = (statistics.fmean(c for c, _ in pairs) / statistics.fmean(a for _, a in pairs)
             if pairs else None)
    weighted = [(float(r["top1_agreement"]), int(r.get("samples") or 0)) for r in reports
                if r.get("top1_agreement") is not None]
    drifted = [float(any(isinstance(d, dict) and d.get("drifted")
                         for d in (r.get("drift") or {}).values()))
               for r in reports if r.get("drift")]
    clipped = _clipped_ratios([c / a for c, a in pairs])
    return {
        "reported": {r["device_id"] for r in reports if int(r.get("samples") or 0) > 0},
        "samples": samples,
        "agreement": agreement,
        "latency_ratio": ratio,
        "error_rate": (errors / (samples + errors)) if samples + errors else None,
        "pace_achieved": round(samples / window_s * 60.0, 2) if window_s > 0 else None,
        "fallback_devices": len({r["device_id"] for r in reports
                                 if r.get("candidate_fallback")}),
        "sequential": {
            "agreement": [sum(a * n for a, n in weighted), sum(n for _, n in weighted)],
            "error_rate": [errors, samples + errors],
            "latency_ratio": [sum(clipped), len(clipped)],
            "drift": [sum(drifted), len(drifted)],
        },
    }


def _canary(store: RolloutStore, rollout: Row, devices: dict[str, Row], cohort: list[str],
            since: float) -> dict[str, Any]:
    ref = rollout["bundle_ref"]
    rows = [r["data"] for r in store.telemetry(device_ids=cohort, since=since)]
    mine = [t for t in rows if t.get("bundle") == ref]
    inferences = sum(int(t.get("inferences") or 0) for t in mine)
    errors = sum(int(t.get("errors") or 0) for t in mine)
    cand_p95 = _weighted_mean([(p, max(1, int(t.get("inferences") or 0))) for t in mine
                               if (p := _p95(t.get("latency_ms"))) is not None])
    base = _baseline_p95(store, rollout)
    clipped = _clipped_ratios([p / base for t in mine
                               if (p := _p95(t.get("latency_ms"))) is not None and base])
    deployments = sorted({str(devices[d]["deployment_id"]) for d in cohort if d in devices})
    seqs = {(d, int(devices[d]["instruction_seq"])) for d in cohort if d in devices}
    states = [t for t in store.target_states(deployment_ids=deployments)
              if (t["device_id"], int(t["instruction_seq"])) in seqs]
    return {
        "reported": {t["device_id"] for t in mine},
        "samples": inferences,
        "latency_ratio": (cand_p95 / base) if cand_p95 is not None and base else None,
        "error_rate": (errors / inferences) if inferences else None,
        "installs_done": sum(1 for t in states if t["state"] in DONE_STATES),
        "installs_failed": sum(1 for t in states if t["state"] in FAILED_STATES),
        "fallback_devices": len({t["device_id"] for t in mine if t.get("fallback")}),
        "sequential": {"error_rate": [errors, inferences],
                       "latency_ratio": [sum(clipped), len(clipped)]},
    }


def _add_control(m: dict[str, Any], store: RolloutStore, rollout: Row, control: list[str],
                 since: float) -> None:
    """Canary minus control: the control devices' telemetry (their current bundle) since the
    stage started, beside the canary's, for the two-sample gates."""
    found = [t for t in store.telemetry(device_ids=control, since=since)
             if t["data"].get("bundle") and t["data"]["bundle"] != rollout["bundle_ref"]]
    rows = [t["data"] for t in found]
    base = _baseline_p95(store, rollout)
    clipped = _clipped_ratios([p / base for t in rows
                               if (p := _p95(t.get("latency_ms"))) is not None and base])
    seq = m["sequential"]
    seq["error_rate_vs_control"] = [*seq["error_rate"],
                                    sum(int(t.get("errors") or 0) for t in rows),
                                    sum(int(t.get("inferences") or 0) for t in rows)]
    seq["latency_ratio_vs_control"] = [*seq["latency_ratio"], sum(clipped), len(clipped)]
    m["control_reporting"] = len({t["device_id"] for t in found})


def _baseline_p95(store: RolloutStore, rollout: Row) -> float | None:
    """p95 of the previous bundles on the target: before the rollout and on devices not in
    it yet."""
    rows = [r["data"] for r in store.telemetry(
        device_ids=list(rollout["devices"]),
        since=float(rollout["created_at"]) - BASELINE_WINDOW_S)]
    return _weighted_mean([(p, max(1, int(t.get("inferences") or 0))) for t in rows
                           if t.get("bundle") and t.get("bundle") != rollout["bundle_ref"]
                           and (p := _p95(t.get("latency_ms"))) is not None])


def comparison(store: RolloutStore, rollout: Row) -> dict[str, Any]:
    """Active vs candidate over the whole rollout, per device and per report."""
    reports = [r["data"] for r in store.shadow_reports(
        candidate_sha256=rollout["bundle_id"], device_ids=list(rollout["devices"]),
        since=float(rollout["created_at"]))]
    per_device: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in reports:
        per_device[r["device_id"]].append(r)
    agreement = []
    for rs in per_device.values():
        value = _weighted_mean([(float(r["top1_agreement"]), float(r.get("samples") or 0))
                                for r in rs if r.get("top1_agreement") is not None])
        if value is not None:
            agreement.append(value)
    drift: dict[str, list[float]] = defaultdict(list)
    drifted: dict[str, int] = defaultdict(int)
    for rs in per_device.values():
        latest = (rs[-1].get("drift") or {})
        for name, d in latest.items():
            if isinstance(d, dict) and isinstance(d.get("psi"), int | float):
                drift[name].append(float(d["psi"]))
                drifted[name] += bool(d.get("drifted"))
    return {
        "reports": len(reports),
        "devices": len(per_device),
        "samples": sum(int(r.get("samples") or 0) for r in reports),
        "agreement_per_device": agreement,
        "score_delta": [float(r["score_delta_mean"]) for r in reports
                        if r.get("score_delta_mean") is not None],
        "mae": [float(r["mae"]) for r in reports if r.get("mae") is not None],
        "latency_active_p95": [p for r in reports
                               if (p := _p95(r.get("latency_ms_active"))) is not None],
        "latency_candidate_p95": [p for r in reports
                                  if (p := _p95(r.get("latency_ms_candidate"))) is not None],
        "drift": {name: {"psi_mean": statistics.fmean(v), "psi_max": max(v),
                         "devices": len(v), "drifted": drifted[name]}
                  for name, v in sorted(drift.items())},
    }
