"""Fleet gauges read at scrape time: devices by status, rollouts by state, and the stage and
gate values of every active rollout (from its last evaluation, as the REST API shows it).

A ``prometheus_client`` custom collector: nothing is kept up to date in between, each
scrape reads the registry once for the device counts and once for the rollouts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

DEVICE_STATUSES = ("online", "offline", "never")
ROLLOUT_STATES = ("running", "paused", "halted", "aborted", "completed")
EXPORTED_STATES = ("running", "paused")
"""Rollouts whose stage and gates are exported (finished ones would only add series)."""
OUTCOMES = ("wait", "pass", "fail")
DECISIONS = ("continue", "pass", "halt")

Row = dict[str, Any]

# gate field -> (metric suffix, help)
_GATE_VALUES = (
    ("measured", "value", "Gate value measured at the rollout's last evaluation (for a "
     "sequential gate, the interval's estimate)"),
    ("threshold", "threshold", "Gate threshold: the bound the value must meet (for a "
     "sequential gate, the promote line)"),
    ("halt", "halt_threshold", "Sequential gate: the halt line"),
    ("lower", "interval_lower", "Sequential gate: lower bound of the confidence interval"),
    ("upper", "interval_upper", "Sequential gate: upper bound of the confidence interval"),
    ("n", "samples", "Sequential gate: observations behind the interval"),
)


class FleetCollector(Collector):
    """``overview()`` is ``Registry.fleet_overview`` (status counts); ``rollouts()`` lists
    every rollout row (``RolloutStore.list_rollouts``)."""

    def __init__(self, overview: Callable[[], Row], rollouts: Callable[[], list[Row]]) -> None:
        self._overview = overview
        self._rollouts = rollouts

    def describe(self) -> list[Metric]:
        return []  # no read at registration; the names are unique to this collector

    def collect(self) -> Iterator[Metric]:
        counts = self._overview()
        online = GaugeMetricFamily("edgefleet_devices_online",
                                   "Enrolled devices whose MQTT session is up now")
        online.add_metric([], counts["online"])
        yield online
        by_status = GaugeMetricFamily(
            "edgefleet_devices", "Enrolled devices by status (online, offline: seen before, "
            "never: enrolled and never connected)", labels=["status"])
        for status in DEVICE_STATUSES:
            by_status.add_metric([status], counts[status])
        yield by_status
        yield from _rollouts(self._rollouts())


def _rollouts(rows: list[Row]) -> Iterator[Metric]:
    by_state = GaugeMetricFamily("edgefleet_rollouts", "Rollouts by state", labels=["state"])
    for state in ROLLOUT_STATES:
        by_state.add_metric([state], sum(1 for r in rows if r["state"] == state))
    yield by_state
    rl = ["rollout"]
    info = GaugeMetricFamily("edgefleet_rollout_info", "1 for each running or paused "
                             "rollout, with its bundle, state and current stage",
                             labels=["rollout", "bundle", "state", "stage"])
    stage = GaugeMetricFamily("edgefleet_rollout_stage_index", "Index of the rollout's "
                              "current stage in its plan, from 0", labels=rl)
    stages = GaugeMetricFamily("edgefleet_rollout_stages", "Stages in the rollout's plan",
                               labels=rl)
    evaluated = GaugeMetricFamily("edgefleet_rollout_last_evaluation_timestamp_seconds",
                                  "When the rollout's gates were last evaluated", labels=rl)
    outcome = GaugeMetricFamily("edgefleet_rollout_evaluation_outcome", "1 on the outcome "
                                "of the last evaluation (wait, pass, fail), 0 on the others",
                                labels=["rollout", "outcome"])
    gl = ["rollout", "gate"]
    values = {field: GaugeMetricFamily(f"edgefleet_rollout_gate_{suffix}", text, labels=gl)
              for field, suffix, text in _GATE_VALUES}
    passing = GaugeMetricFamily("edgefleet_rollout_gate_passing", "1 when the gate is met, "
                                "0 when it is not (absent while not measured or undecided)",
                                labels=gl)
    decision = GaugeMetricFamily("edgefleet_rollout_gate_decision", "Sequential gate: 1 on "
                                 "its decision (continue, pass, halt), 0 on the others",
                                 labels=["rollout", "gate", "decision"])
    for row in rows:
        if row["state"] not in EXPORTED_STATES:
            continue
        rid, plan_stages = str(row["id"]), row["plan"]["stages"]
        idx = int(row["stage_index"])
        name = plan_stages[min(idx, len(plan_stages) - 1)]["name"]
        info.add_metric([rid, str(row["bundle_ref"]), str(row["state"]), str(name)], 1)
        stage.add_metric([rid], idx)
        stages.add_metric([rid], len(plan_stages))
        ev = row.get("last_evaluation")
        if not ev:
            continue
        evaluated.add_metric([rid], float(ev["at"]))
        for o in OUTCOMES:
            outcome.add_metric([rid, o], float(ev["outcome"] == o))
        for gate in ev["gates"]:
            labels = [rid, str(gate["name"])]
            for field, family in values.items():
                if gate.get(field) is not None:
                    family.add_metric(labels, float(gate[field]))
            if gate.get("ok") is not None:
                passing.add_metric(labels, float(gate["ok"]))
            if gate.get("decision") is not None:
                for d in DECISIONS:
                    decision.add_metric([*labels, d], float(gate["decision"] == d))
    yield from (info, stage, stages, evaluated, outcome, *values.values(), passing, decision)
