"""The rollout driver: the I/O shell around the pure policy.

All state lives in the registry (``RolloutStore``); ``tick()`` re-reads it, issues the
instructions the current stage still owes, measures, evaluates and records the decision.
Issuing is idempotent (a device whose stored role already matches is skipped), so a restart
at any point resumes where the last tick stopped. Operator actions take the same lock.

With several replicas (``lease``), only the replica holding the leader lease ticks: on the
others ``tick()`` does nothing (an operator's rollout, made on any replica, is driven by the
leader's next tick). Every instruction and decision a tick makes is written in a transaction
fenced by the lease (``Lease.fenced``): a leader that lost its lease while paused writes
nothing and sends nothing (``LeaseLost``, logged).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from fleet_server.deployments import Deployer
from fleet_server.errors import ConflictError, InvalidInputError, NotFoundError
from fleet_server.leader import Lease, LeaseLost
from fleet_server.registry import Registry
from fleet_server.rollout_store import RolloutStore, Row
from fleet_server.rollouts.metrics import stage_metrics
from fleet_server.rollouts.pace import shadow_pace
from fleet_server.rollouts.plan import Plan, Stage, default_plan
from fleet_server.rollouts.policy import (
    Evaluation,
    cohort_order,
    cohort_size,
    control_devices,
    evaluate,
)
from ota.instructions import BundleRef

log = logging.getLogger(__name__)

DRIVER = "rollout-driver"

REACT_S = 0.5
"""While a rollout runs, the driver ticks again this soon after the registry changed (a
report or an install state stored: ``Registry.change_cursor``) instead of waiting for the
poll interval, and issues a stage's instructions in the tick that entered it. The wait is
at least twice the last tick's duration (so ticking takes at most a third of the driver's
time) and at most the poll interval. 0: poll every interval only (the driver before;
``bench.fleet_sim`` compares both)."""


class RolloutDriver:
    def __init__(self, *, registry: Registry, store: RolloutStore, deployer: Deployer,
                 clock: Callable[[], float] = time.time, lease: Lease | None = None,
                 react_s: float | None = None) -> None:
        self._registry = registry
        self.lease = lease
        self._fencing = False  # inside a tick of the lease holder
        self._store = store
        self._deployer = deployer
        self._clock = clock
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None
        self._react_s = REACT_S if react_s is None else react_s
        self._running = False  # whether the last tick saw a running rollout (REACT_S)
        self._tick_cost = 0.0

    # -- background loop --------------------------------------------------------------------
    def start(self, interval_s: float) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(interval_s,),
                                        name="rollout-driver", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        """Tick now rather than at the end of the interval (a replica that took the lease)."""
        self._kick.set()

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(15)
            self._thread = None

    def _loop(self, interval_s: float) -> None:
        marker, last = None, time.monotonic()
        while not self._stop.is_set():
            react = self._react_s > 0 and self._running
            # never longer than the poll interval (a long tick, e.g. issuing a large stage,
            # must not push the next evaluation further than polling would)
            self._kick.wait(min(interval_s, max(self._react_s, 2 * self._tick_cost))
                            if react else interval_s)
            self._kick.clear()
            if self._stop.is_set():
                return
            if react and time.monotonic() - last < interval_s:
                seen = self._registry.change_cursor()
                if seen == marker:  # nothing stored since the last tick: nothing to decide
                    continue
                marker = seen
            last = time.monotonic()
            try:
                self.tick()
            except Exception:  # one bad rollout must not stop the others next tick
                log.exception("rollout tick failed")
            self._tick_cost = time.monotonic() - last

    # -- operations ---------------------------------------------------------------------------
    def create(self, *, bundle: str, group: str | None = None,
               devices: list[str] | None = None, plan: dict[str, Any] | None = None,
               actor: str = "admin") -> Row:
        if (group is None) == (not devices):
            raise InvalidInputError("give exactly one of group or devices")
        parsed = default_plan() if plan is None else Plan.from_dict(plan)
        row = self._registry.find_bundle(key=bundle)
        self._deployer.bundle_ref_for(row["id"])  # the publisher must be known
        if group is not None:
            ids = [str(d["id"]) for d in self._registry.list_devices(group=group)]
            if not ids:
                raise NotFoundError(f"no devices in group {group}")
            kind, value = "group", group
        else:
            if devices is None:
                raise RuntimeError("a rollout names a group or devices")
            for device_id in devices:
                self._registry.get_device(device_id=device_id)
            ids, kind, value = sorted(set(devices)), "devices", ",".join(sorted(set(devices)))
        now = self._clock()
        with self._lock:
            rollout_id = self._store.next_rollout_id()
            self._store.add_rollout(
                rollout_id=rollout_id, bundle_id=row["id"], bundle_ref=row["ref"],
                target_kind=kind, target_value=value, devices=cohort_order(ids, rollout_id),
                plan=parsed.to_dict(), created_by=actor, now=now)
            control = sorted(control_devices(ids, rollout_id, parsed.control_percent))
            for device_id in control:  # recorded once; kept on its bundle until the last stage
                self._store.set_rollout_device(
                    rollout_id=rollout_id, device_id=device_id, role="control",
                    stage_index=0, instruction_seq=0, deployment_id="",
                    previous_bundle_id=self._active_sha(device_id), now=now)
            self._decide(rollout_id, 0, parsed.stages[0], "created", actor,
                         f"{row['ref']} to {kind} {value} ({len(ids)} devices"
                         + (f", {len(control)} kept as control" if control else "") + ")",
                         {"plan": parsed.to_dict(), "control": control})
            self.tick(rollout_id=rollout_id)
            return self._store.get_rollout(rollout_id=rollout_id)

    def pause(self, rollout_id: str, actor: str) -> Row:
        return self._transition(rollout_id, actor, "pause", ("running",), "paused")

    def resume(self, rollout_id: str, actor: str) -> Row:
        with self._lock:
            row = self._store.get_rollout(rollout_id=rollout_id)
            extra = {"stage_started_at": self._clock()} if row["state"] == "halted" else {}
            out = self._transition(rollout_id, actor, "resume", ("paused", "halted"),
                                   "running", **extra)
            self.tick(rollout_id=rollout_id)
            return self._store.get_rollout(rollout_id=rollout_id) if extra else out

    def abort(self, rollout_id: str, actor: str) -> Row:
        with self._lock:
            out = self._transition(rollout_id, actor, "abort", ("running", "paused", "halted"),
                                   "aborted")
            self._rollback(out, actor)
            return self._store.get_rollout(rollout_id=rollout_id)

    def promote(self, rollout_id: str, actor: str) -> Row:
        """Pass the current stage by hand (recorded with the numbers measured so far)."""
        with self._lock:
            row = self._store.get_rollout(rollout_id=rollout_id)
            if row["state"] not in ("running", "paused", "halted"):
                raise ConflictError(f"rollout {rollout_id} is {row['state']}: cannot promote")
            plan = Plan.from_dict(row["plan"])
            self._advance(row, plan, actor, "promote", row.get("last_evaluation") or {})
            if row["state"] != "running":
                now = self._clock()
                state = self._store.get_rollout(rollout_id=rollout_id)["state"]
                if state != "completed":
                    self._store.update_rollout(rollout_id=rollout_id, now=now, state="running")
            self.tick(rollout_id=rollout_id)
            return self._store.get_rollout(rollout_id=rollout_id)

    def _transition(self, rollout_id: str, actor: str, action: str, allowed: tuple[str, ...],
                    new_state: str, **fields: Any) -> Row:
        with self._lock:
            row = self._store.get_rollout(rollout_id=rollout_id)
            if row["state"] not in allowed:
                raise ConflictError(f"rollout {rollout_id} is {row['state']}: cannot {action}")
            self._store.update_rollout(rollout_id=rollout_id, now=self._clock(),
                                       state=new_state, **fields)
            plan = Plan.from_dict(row["plan"])
            idx = int(row["stage_index"])
            self._decide(rollout_id, idx, plan.stages[min(idx, len(plan.stages) - 1)], action,
                         actor, f"{row['state']} -> {new_state}", {})
            return self._store.get_rollout(rollout_id=rollout_id)

    # -- the tick ----------------------------------------------------------------------------
    def tick(self, rollout_id: str | None = None) -> None:
        if self.lease is not None and not self.lease.is_leader():
            return  # the leader drives every rollout
        with self._lock:
            rows = ([self._store.get_rollout(rollout_id=rollout_id)] if rollout_id
                    else self._store.list_rollouts(states=("running",)))
            self._fencing = self.lease is not None
            running = False
            try:
                for row in rows:
                    while row["state"] == "running" and self._step(row) and self._react_s:
                        row = self._store.get_rollout(rollout_id=row["id"])  # next stage now
                    running = running or row["state"] == "running"
            except LeaseLost as e:
                log.warning("rollout tick stopped: %s", e)
            finally:
                self._fencing = False
            if rollout_id is None:
                self._running = running
            elif running and not self._running:  # started by an operator: react from now
                self._running = True
                self._kick.set()

    @contextmanager
    def _fence(self) -> Iterator[None]:
        """During the leader's tick: one transaction that commits only under its lease."""
        if not self._fencing or self.lease is None:
            yield
            return
        with self._registry.lock, self._store.lock, self.lease.fenced():
            yield

    def _instruction_fence(self) -> Callable[[], Any] | None:
        return self._fence if self._fencing else None

    def _step(self, row: Row) -> bool:
        """One evaluation of ``row``'s stage; True when it passed to a next stage."""
        plan = Plan.from_dict(row["plan"])
        stage = plan.stages[int(row["stage_index"])]
        now = self._clock()
        cohort = self._issue(row, int(row["stage_index"]), stage)
        devices = self._store.rollout_devices(rollout_id=row["id"])
        measured = [d for d in cohort if not (devices[d]["excluded"]
                                              and not devices[d]["instruction_seq"])]
        metrics = stage_metrics(self._store, row, stage, measured, now)
        if stage.kind == "shadow" and cohort:
            metrics = replace(metrics, pace_asked=shadow_pace(stage, len(cohort)))
        ev = evaluate(stage, metrics, now - float(row["stage_started_at"]))
        pending = self._pending_installs(row, stage, measured, now)
        if ev.outcome == "pass" and pending:
            ev = Evaluation("wait", f"{pending} installs still pending", ev.gates, ev.metrics)
        snapshot = {"stage_index": row["stage_index"], "stage": stage.name, "at": now,
                    **ev.to_dict()}
        self._store.update_rollout(rollout_id=row["id"], now=now, last_evaluation=snapshot)
        self._store.add_gate_intervals(
            rollout_id=row["id"], stage_index=int(row["stage_index"]), ts=now,
            gates=[g.to_dict() for g in ev.gates if g.decision is not None])
        if ev.outcome == "pass":
            return self._advance(row, plan, DRIVER, "advance", snapshot)
        if ev.outcome == "fail":
            with self._fence():
                self._decide(row["id"], int(row["stage_index"]), stage, "halt", DRIVER,
                             ev.reason, snapshot)
            if plan.rollback_on_halt:
                self._rollback(row, DRIVER)
            # last, so a reader that sees "halted" also sees the rollback
            with self._fence():
                self._store.update_rollout(rollout_id=row["id"], now=now, state="halted")
        return False

    def _pending_installs(self, row: Row, stage: Stage, cohort: list[str], now: float) -> int:
        if stage.kind != "canary":
            return 0
        devices = self._store.rollout_devices(rollout_id=row["id"])
        deps = sorted({str(devices[d]["deployment_id"]) for d in cohort})
        done = {(t["device_id"], int(t["instruction_seq"])) for t in
                self._store.target_states(deployment_ids=deps)
                if t["state"] in ("committed", "failed", "rolled_back")}
        late = now - float(row["stage_started_at"]) >= stage.deadline_s
        return 0 if late else sum(
            1 for d in cohort if (d, int(devices[d]["instruction_seq"])) not in done)

    def _advance(self, row: Row, plan: Plan, actor: str, action: str,
                 numbers: dict[str, Any]) -> bool:
        """Pass the stage; True when there is a next stage (False: rollout complete)."""
        with self._fence():
            return self._advance_unfenced(row, plan, actor, action, numbers)

    def _advance_unfenced(self, row: Row, plan: Plan, actor: str, action: str,
                          numbers: dict[str, Any]) -> bool:
        idx = int(row["stage_index"])
        stage = plan.stages[idx]
        now = self._clock()
        if idx + 1 >= len(plan.stages):
            self._store.update_rollout(rollout_id=row["id"], now=now, state="completed")
            self._decide(row["id"], idx, stage, "complete" if action == "advance" else action,
                         actor, f"{stage.name} passed: rollout complete", numbers)
            return False
        self._store.update_rollout(rollout_id=row["id"], now=now, stage_index=idx + 1,
                                   stage_started_at=now)
        self._decide(row["id"], idx, stage, action, actor,
                     f"{stage.name} -> {plan.stages[idx + 1].name}", numbers)
        return True

    def _issue(self, row: Row, idx: int, stage: Stage) -> list[str]:
        """Instruct every device of the stage's cohort whose stored role differs."""
        order: list[str] = list(row["devices"])
        cohort = order[:cohort_size(len(order), stage.percent)]
        devices = self._store.rollout_devices(rollout_id=row["id"])
        if idx < len(row["plan"]["stages"]) - 1:  # the control group waits for the last stage
            cohort = [d for d in cohort
                      if not (d in devices and devices[d]["role"] == "control")]
        owed = [d for d in cohort if d not in devices or devices[d]["role"] != stage.kind]
        if not owed:
            return cohort
        candidate = self._deployer.bundle_ref_for(row["bundle_id"])
        deployment_id = f"{row['id']}.s{idx}"
        self._ensure_deployment(deployment_id, row, f"{row['bundle_ref']} ({stage.name})")
        now = self._clock()
        pace = shadow_pace(stage, len(cohort)) if stage.kind == "shadow" else None
        for device_id in owed:
            known = devices.get(device_id)
            previous = known["previous_bundle_id"] if known else self._active_sha(device_id)
            if stage.kind == "shadow":
                if previous is None:  # nothing to shadow beside: skip and exclude
                    self._store.set_rollout_device(
                        rollout_id=row["id"], device_id=device_id, role="shadow",
                        stage_index=idx, instruction_seq=0, deployment_id=deployment_id,
                        previous_bundle_id=None, now=now)
                    self._store.set_excluded(rollout_id=row["id"], device_ids=[device_id])
                    continue
                seq = self._deployer.instruct(
                    device_id, self._deployer.bundle_ref_for(previous), deployment_id,
                    shadow=candidate, shadow_sample_rate=stage.shadow_sample_rate,
                    shadow_samples_per_minute=pace, fence=self._instruction_fence())
            else:
                seq = self._deployer.instruct(device_id, candidate, deployment_id,
                                              fence=self._instruction_fence())
            self._store.set_rollout_device(
                rollout_id=row["id"], device_id=device_id, role=stage.kind, stage_index=idx,
                instruction_seq=seq, deployment_id=deployment_id,
                previous_bundle_id=previous, now=now)
        return cohort

    def _rollback(self, row: Row, actor: str) -> None:
        devices = self._store.rollout_devices(rollout_id=row["id"])
        todo = [d for d in devices.values()
                if d["role"] != "rollback" and d["instruction_seq"]]
        if not todo:
            return
        deployment_id = f"{row['id']}.rollback"
        self._ensure_deployment(deployment_id, row, "previous bundles")
        now = self._clock()
        for d in todo:
            previous = d["previous_bundle_id"]
            ref: BundleRef | None = self._deployer.bundle_ref_for(previous) if previous else None
            seq = self._deployer.instruct(d["device_id"], ref, deployment_id,
                                          fence=self._instruction_fence())
            self._store.set_rollout_device(
                rollout_id=row["id"], device_id=d["device_id"], role="rollback",
                stage_index=int(d["stage_index"]), instruction_seq=seq,
                deployment_id=deployment_id, previous_bundle_id=previous, now=now)
        plan = Plan.from_dict(row["plan"])
        idx = min(int(row["stage_index"]), len(plan.stages) - 1)
        self._decide(row["id"], idx, plan.stages[idx], "rollback", actor,
                     f"{len(todo)} devices sent back to their previous bundle",
                     {"devices": sorted(d["device_id"] for d in todo)})

    # -- helpers --------------------------------------------------------------------------
    def _active_sha(self, device_id: str) -> str | None:
        state = self._registry.get_device(device_id=device_id).get("state") or {}
        active = state.get("active") if isinstance(state, dict) else None
        sha = active.get("sha256") if isinstance(active, dict) else None
        if not sha:
            return None
        try:
            self._registry.find_bundle(key=sha)
        except NotFoundError:
            return None
        return str(sha)

    def _ensure_deployment(self, deployment_id: str, row: Row, label: str) -> None:
        try:
            self._registry.get_deployment(deployment_id=deployment_id)
        except NotFoundError:
            self._registry.add_deployment(
                deployment_id=deployment_id, bundle_ref=label, bundle_id=row["bundle_id"],
                target_kind="rollout", target_value=row["id"], created_by=DRIVER)

    def _decide(self, rollout_id: str, idx: int, stage: Stage, action: str, actor: str,
                reason: str, data: dict[str, Any]) -> None:
        now = self._clock()
        self._store.add_decision(rollout_id=rollout_id, ts=now, stage_index=idx,
                                 stage=stage.name, action=action, actor=actor, reason=reason,
                                 data=data)
        self._store.add_audit(actor=actor, action=f"rollout.{action}", subject=rollout_id,
                              detail={"stage": stage.name, "reason": reason}, ts=now)
        log.info("rollout %s %s at %s by %s: %s", rollout_id, action, stage.name, actor,
                 reason)
