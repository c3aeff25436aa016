"""Shadow mode: run a sample of live predict calls on a candidate model, off the request path.

``ShadowRunner.offer(inputs, active_outputs, active_latency_ms)`` is called after the active
model answered. It costs a random draw, a budget check and a non-blocking queue put, and
never raises: the caller's answer is already computed and is never touched. A single
worker thread takes samples from a bounded queue, runs the candidate, compares the outputs
(``shadow_stats``) and updates the input-drift sketches (``drift``).

Bounds, so shadow stays out of the active path's way (the policy is ``shadow_budget``):
- pace: a token bucket on samples refilled at the pace the rollout stage's gates need
  (``set_pace``, from the instruction; else ``samples_per_minute``), never more than the
  stage's ``sample_rate`` share of calls.
- ``queue_size``: at most this many samples wait; a sample offered to a full queue is
  dropped and counted.
- CPU (``cpu_share``, measured thread CPU time) and duty cycle (``cpu_budget``, wall time
  of candidate runs) token buckets; while either is empty, samples are dropped and counted.
- power hints (thermal zones, battery) scale the pace and both budgets down.
- ``yield_to_active``: a sample runs only in a gap of the active path that is predicted to
  outlast the candidate run; no such gap within ``max_wait_s``: dropped, counted, and its
  sample token given back so a later call is sampled instead.
- The candidate opens with one intra-op thread (``ShadowConfig.candidate_threads``, no
  spinning) and runs in the worker thread, which lowers its own scheduling priority (nice
  19 and ``SCHED_IDLE`` on Linux) and yields the GIL between samples.

``collect`` closes the window: a ``ShadowReport`` (or ``None`` with no candidate) and a
fresh window.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from device_agent.drift import DriftSketch
from device_agent.shadow_budget import PowerReading, ShadowBudget, ShadowConfig
from device_agent.shadow_stats import OutputMismatch, ShadowWindow, compare, pick_output
from model_bundles.input_stats import InputStats
from ota.messages import LatencySummary, ShadowReport

__all__ = ["Candidate", "ShadowConfig", "ShadowRunner"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """A loaded candidate: its runtime (a ``ModelRuntime``-like object with ``predict``,
    ``bundle``, ``delegate``, ``session``, ``manifest``) and what the report needs."""

    runtime: Any
    sha256: str
    sample_rate: float
    reference: InputStats | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError("sample_rate must be in [0, 1]")


@dataclass
class _Generation:
    candidate: Candidate
    window: ShadowWindow
    drift: DriftSketch | None
    output_names: tuple[str, ...]
    started: float


class ShadowRunner:
    """Lives as long as the agent; holds at most one candidate at a time."""

    def __init__(self, config: ShadowConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 cpu_clock: Callable[[], float] = time.thread_time,
                 rng: random.Random | None = None,
                 power: Callable[[], PowerReading] | None = None) -> None:
        self.config = config or ShadowConfig()
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - sampling decisions, not security
        self._queue: queue.Queue[tuple[_Generation, Mapping[str, Any], Mapping[str, Any] | None, float]
                                 | None] = queue.Queue(maxsize=self.config.queue_size)
        self._lock = threading.Lock()
        self._gen: _Generation | None = None
        self._retired: list[Any] = []
        self._cpu_clock = cpu_clock
        self.budget = ShadowBudget(self.config, clock(), power=power)
        self._thread: threading.Thread | None = None
        self.total_dropped = 0
        self.total_samples = 0

    # -- request path ---------------------------------------------------------------------

    def offer(self, inputs: Mapping[str, Any], active_outputs: Mapping[str, Any],
              active_latency_ms: float) -> bool:
        """Maybe queue this call for the candidate. Never blocks, never raises; True if
        queued. Inputs/outputs are kept by reference: callers must not mutate them after."""
        try:
            gen = self._gen
            if gen is None:
                return False
            with self._lock:
                # the activity model runs on the real clock: the worker waits in real time
                self.budget.activity.observe_active(time.monotonic(), active_latency_ms / 1e3)
                if self._rng.random() >= gen.candidate.sample_rate:
                    return False
                now = self._clock()
                if not self.budget.sample(now):
                    # the pace the stage needs is met: not a drop; the inputs may still
                    # feed the drift sketches
                    if gen.drift is not None and self.budget.drift_sample(now):
                        with contextlib.suppress(queue.Full):
                            self._queue.put_nowait((gen, inputs, None, 0.0))
                    return False
                refused = self.budget.admit(now)
            if refused is not None:
                self._drop(gen, refused)
                return False
            try:
                self._queue.put_nowait((gen, inputs, active_outputs, float(active_latency_ms)))
            except queue.Full:
                self._drop(gen, "queue")
                return False
            return True
        except Exception:  # the request path must never fail because of shadow
            log.exception("shadow offer failed")
            return False

    def _drop(self, gen: _Generation, reason: str) -> None:
        with self._lock:
            gen.window.add_dropped()
            self.total_dropped += 1
            self.budget.drop(reason)
            if reason == "busy":  # no gap in the active path: a later call takes its place
                self.budget.refund()

    def set_pace(self, samples_per_minute: float | None) -> float:
        """The pace the rollout stage asked for (None: the configured one), capped by the
        device (``ShadowBudget.set_pace``); returns the pace set."""
        with self._lock:
            pace = self.budget.set_pace(samples_per_minute, self._clock())
        log.info("shadow pace %.1f samples/min (asked %s)", pace, samples_per_minute)
        return pace

    @property
    def drops_by_reason(self) -> dict[str, int]:
        """Drops since start by reason: queue, cpu, duty, paused (power hints), busy."""
        with self._lock:
            return dict(self.budget.drops)

    # -- candidate lifecycle ---------------------------------------------------------------

    @property
    def candidate(self) -> Candidate | None:
        gen = self._gen
        return None if gen is None else gen.candidate

    def set_candidate(self, candidate: Candidate | None) -> None:
        """Start shadowing ``candidate`` (None: stop). A replaced runtime is closed by the
        worker once it is no longer running it."""
        old = self._gen
        if candidate is None:
            self._gen = None
        elif old is not None and old.candidate.runtime is candidate.runtime:
            old.candidate = candidate  # only the sample rate changed
            return
        else:
            rt = candidate.runtime
            drift = (DriftSketch(candidate.reference, reservoir=self.config.drift_reservoir)
                     if candidate.reference is not None and candidate.reference.inputs else None)
            self._gen = _Generation(
                candidate, ShadowWindow(rt.manifest.task, self.config.latency_reservoir),
                drift, tuple(o.name for o in rt.manifest.outputs), self._clock())
        if old is not None and (candidate is None or old.candidate.runtime is not candidate.runtime):
            self._retire(old.candidate.runtime)

    def _retire(self, runtime: Any) -> None:
        if self._thread is None or not self._thread.is_alive():
            runtime.close()
        else:
            with self._lock:
                self._retired.append(runtime)

    # -- worker ---------------------------------------------------------------------------

    def start(self) -> ShadowRunner:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="edgefleet-shadow",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            while True:
                try:
                    self._queue.put(None, timeout=0.1)
                    break
                except queue.Full:
                    if not thread.is_alive():
                        break
            thread.join(timeout)
        self.set_candidate(None)
        with self._lock:
            retired, self._retired = self._retired, []
        for rt in retired:
            rt.close()

    def _close_retired(self) -> None:
        with self._lock:
            retired, self._retired = self._retired, []
        for rt in retired:
            try:
                rt.close()
            except Exception:
                log.exception("closing a retired shadow candidate failed")

    def _work(self) -> None:
        _lower_priority(self.config.worker_nice, self.config.worker_sched_idle)
        while True:
            self._close_retired()
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                if item is None:
                    return
                if item[2] is None:  # drift only (no candidate run): skipped, not a drop, if busy
                    if not self.config.yield_to_active or self._wait_for_quiet():
                        self.process(*item)
                    continue
                if self.config.yield_to_active and not self._wait_for_quiet():
                    self._drop(item[0], "busy")
                    continue
                self.process(*item)
            except Exception:
                log.exception("shadow sample failed")
            finally:
                self._queue.task_done()
            time.sleep(0)  # hand the GIL to a waiting request thread between samples

    def _wait_for_quiet(self) -> bool:
        """Wait (up to ``max_wait_s``) for a gap in the active path predicted to outlast a
        candidate run; False if none came."""
        deadline = time.monotonic() + self.config.max_wait_s
        while True:
            now = time.monotonic()
            with self._lock:
                wait = self.budget.activity.wait_s(now)
            if wait <= 0.0:
                return True
            if now >= deadline:
                return False
            time.sleep(min(wait, deadline - now))

    def process(self, gen: _Generation, inputs: Mapping[str, Any],
                active_outputs: Mapping[str, Any] | None, active_ms: float) -> None:
        """Run one sample on the candidate and fold it into its window (worker thread);
        ``active_outputs`` None: only feed the drift sketches."""
        if gen is not self._gen:
            return  # the candidate changed while this sample waited
        if active_outputs is None:
            self._update_drift(gen, inputs)
            return
        t0, c0 = self._clock(), self._cpu_clock()
        try:
            pred = gen.candidate.runtime.predict(inputs)
            error = None
        except Exception as e:
            pred, error = None, e
        with self._lock:
            self.budget.spend(self._clock() - t0, self._cpu_clock() - c0)
        comparison = None
        if pred is not None:
            name = pick_output(gen.output_names, active_outputs)
            try:
                if name is None or name not in pred.outputs:
                    raise OutputMismatch("no float output shared by both models")
                comparison = compare(gen.window.task, np.asarray(active_outputs[name]),
                                     np.asarray(pred.outputs[name]))
            except OutputMismatch as e:
                error = e
        with self._lock:
            if comparison is not None and pred is not None:
                gen.window.add(comparison, active_ms, pred.latency_ms)
                self.total_samples += 1
            else:
                log.debug("shadow candidate error: %s", error)
                gen.window.add_error()
        self._update_drift(gen, inputs)

    def _update_drift(self, gen: _Generation, inputs: Mapping[str, Any]) -> None:
        if gen.drift is None:
            return
        try:
            drift_inputs = {k: np.asarray(v) for k, v in inputs.items()}
        except Exception:
            return
        with self._lock:
            try:
                gen.drift.update(drift_inputs)
            except Exception:
                log.debug("drift update skipped", exc_info=True)

    # -- reporting ------------------------------------------------------------------------

    def collect(self, *, device_id: str, seq: int, active: str | None,
                ts: float | None = None) -> ShadowReport | None:
        """Close the current window as a ``ShadowReport`` (None: no candidate or no active
        model) and start the next window."""
        gen = self._gen
        if gen is None or not active:
            return None
        now = self._clock()
        with self._lock:
            s = gen.window.summary()
            drift = gen.drift.report() if gen.drift is not None else {}
            gen.window.reset()
            if gen.drift is not None and drift:
                # too few sampled rows for any input (the budget's pace): they carry over
                # into the next window instead of being thrown away
                gen.drift.reset()
            window_s, gen.started = max(0.0, now - gen.started), now
        rt = gen.candidate.runtime
        return ShadowReport(
            device_id=device_id, seq=seq, ts=time.time() if ts is None else ts,
            window_s=window_s, active=active, candidate=rt.bundle,
            candidate_sha256=gen.candidate.sha256, task=gen.window.task,
            samples=s.samples, dropped=s.dropped, candidate_errors=s.candidate_errors,
            top1_agreement=s.top1_agreement, score_delta_mean=s.score_delta_mean,
            mae=s.mae, max_abs_error=s.max_abs_error, cosine=s.cosine,
            latency_ms_active=_lat(s.latency_ms_active),
            latency_ms_candidate=_lat(s.latency_ms_candidate),
            candidate_delegate=str(rt.delegate),
            candidate_fallback=bool(getattr(rt.session, "fallback", False)),
            drift=drift,
        )

    def idle(self) -> bool:
        """True when no sample is queued or running (tests and benches use it to settle)."""
        return self._queue.unfinished_tasks == 0

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until the worker has processed every queued sample; True if it did."""
        deadline = time.monotonic() + timeout
        while not self.idle():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True


def _lower_priority(nice: int, sched_idle: bool) -> None:
    """Lower the calling thread's CPU priority where the OS allows (Linux: per thread):
    ``nice``, then ``SCHED_IDLE`` (runs only on a core nothing else wants)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), nice))
    except (AttributeError, OSError):
        log.debug("cannot lower the shadow worker's priority", exc_info=True)
    if not sched_idle:
        return
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: this thread
    except (AttributeError, OSError):
        log.debug("SCHED_IDLE not available for the shadow worker", exc_info=True)


def _lat(d: dict[str, float] | None) -> LatencySummary | None:
    return None if d is None else LatencySummary(**d)

