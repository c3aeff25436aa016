"""The shadow budget: when the shadow worker may take and run a sample (a pure policy).

``ShadowBudget`` owns no thread and reads no clock: every call takes ``now`` (and the
seconds a run spent), so tests drive it with a fake clock. ``ShadowRunner`` asks it:

- ``sample(now)``: should this offered call become a shadow sample? A token bucket on
  samples refilled at the pace the rollout stage needs (``set_pace``: sent by the server in
  the instruction, capped at ``max_samples_per_minute``; else ``samples_per_minute``),
  holding at most ``sample_burst``. Between samples the active path runs undisturbed: at 100 calls/s
  and 120 samples/min, one call in 50 is followed by a candidate run.
- ``admit(now)``: may a sampled call run, budget-wise? Two buckets: CPU time of the worker
  (``cpu_share`` CPU-seconds per second, ``cpu_burst_s`` banked) and wall time of the
  candidate runs, the duty cycle (``cpu_budget`` seconds per second, ``burst_s`` banked).
  A refusal is a drop (counted by reason).
- ``spend(wall_s, cpu_s)``: charge a finished run to both buckets.
- ``refund()``: a sample dropped because the active path left no gap gives its sample
  token back, so a later call takes it: sampling rises towards ``samples_per_minute``
  but never past the CPU and duty buckets, which are never refunded.
- ``quiet(now, candidate_s)``: has the active path been idle long enough, and is it
  predicted to stay idle for a candidate run? (see ``ActivityModel``).

Power hints (``read_power``) scale every refill rate by ``factor``: a hot CPU or a
discharging / low battery lowers the pace and the budget; a critical one pauses shadow.
Where the OS exposes neither (no ``thermal_zone*``, no battery), the factor is 1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ActivityModel", "PowerReading", "ShadowBudget", "ShadowConfig", "hint_factor",
           "read_power"]


@dataclass(frozen=True)
class ShadowConfig:
    queue_size: int = 8
    cpu_budget: float = 0.25
    """Duty cycle: the share of wall time the candidate may spend running (token bucket on
    wall time, ``burst_s`` banked). A candidate slowed by other load spends it faster."""
    burst_s: float = 0.05
    cpu_share: float = 0.10
    """CPU seconds per second the shadow worker may use (measured thread CPU time)."""
    cpu_burst_s: float = 0.05
    samples_per_minute: float = 120.0
    """The pace sampling aims for, per device, when the instruction names none. Spare
    budget is not spent on more samples; the stage's ``shadow_sample_rate`` still caps the
    share of calls that may be sampled."""
    max_samples_per_minute: float = 600.0
    """The most a server-sent pace (``ShadowBudget.set_pace``) may set: the device's own
    ceiling (raised to ``samples_per_minute`` when that is configured higher). The CPU and
    duty buckets still bound what is run."""
    sample_burst: float = 2.0
    drift_per_minute: float = 600.0
    """Calls not taken as shadow samples may still feed the input-drift sketches (no
    candidate run: a cheap histogram update in the worker), at this pace."""
    candidate_threads: int = 1
    latency_reservoir: int = 1024
    drift_reservoir: int = 256
    worker_nice: int = 19
    """Niceness of the shadow worker thread (Linux: per thread); it also asks for
    ``SCHED_IDLE`` where the OS allows, so it only gets cores no request thread wants."""
    worker_sched_idle: bool = True
    yield_to_active: bool = True
    """Run a sample only once the active path has been quiet for ``idle_factor`` times its
    recent latency (at least ``min_idle_s``) and is predicted to stay quiet for a candidate
    run; a sample that finds no such gap within ``max_wait_s`` is dropped and counted."""
    idle_factor: float = 2.0
    min_idle_s: float = 0.0005
    max_wait_s: float = 0.05
    sysfs_root: str = "/sys/class"
    """Where the power hints are read (``thermal/thermal_zone*/temp``,
    ``power_supply/*/{type,capacity,status}``); tests point it at a fake directory."""
    hints_every_s: float = 10.0
    hot_c: float = 70.0
    critical_c: float = 85.0
    on_battery_factor: float = 0.5
    low_battery_pct: float = 30.0
    low_battery_factor: float = 0.25
    critical_battery_pct: float = 15.0

    def __post_init__(self) -> None:
        if not isinstance(self.queue_size, int) or self.queue_size < 1:
            raise ValueError("queue_size must be a positive integer")
        if not 0.0 < self.cpu_budget <= 1.0:
            raise ValueError("cpu_budget must be in (0, 1]")
        if not 0.0 < self.cpu_share <= 1.0:
            raise ValueError("cpu_share must be in (0, 1]")
        if self.burst_s < 0 or self.cpu_burst_s < 0:
            raise ValueError("burst_s and cpu_burst_s must be >= 0")
        if not self.samples_per_minute > 0 or self.sample_burst < 1:
            raise ValueError("samples_per_minute must be > 0 and sample_burst >= 1")
        if not self.max_samples_per_minute > 0:
            raise ValueError("max_samples_per_minute must be > 0")
        if self.drift_per_minute < 0:
            raise ValueError("drift_per_minute must be >= 0")
        if not self.hot_c < self.critical_c:
            raise ValueError("hot_c must be below critical_c")
        if not 0 <= self.critical_battery_pct <= self.low_battery_pct <= 100:
            raise ValueError("need 0 <= critical_battery_pct <= low_battery_pct <= 100")


@dataclass(frozen=True)
class PowerReading:
    temp_c: float | None = None
    """Hottest thermal zone, degrees C (None: no readable zone)."""
    battery_pct: float | None = None
    discharging: bool = False


def read_power(root: Path) -> PowerReading:
    """Read the Linux thermal zones and batteries under ``root`` (``/sys/class``).
    Anything missing or unreadable is left out; never raises."""
    temps = []
    for p in sorted(root.glob("thermal/thermal_zone*/temp")):
        try:
            temps.append(int(p.read_text().strip()) / 1000.0)
        except (OSError, ValueError):
            continue
    battery, discharging = None, False
    for ps in sorted(root.glob("power_supply/*")):
        try:
            if (ps / "type").read_text().strip() != "Battery":
                continue
            pct = float((ps / "capacity").read_text().strip())
            status = (ps / "status").read_text().strip()
        except (OSError, ValueError):
            continue
        battery = pct if battery is None else min(battery, pct)
        discharging = discharging or status == "Discharging"
    return PowerReading(max(temps) if temps else None, battery, discharging)


def hint_factor(r: PowerReading, cfg: ShadowConfig) -> float:
    """Scale (0..1) for the pace and the budget. Thermal: 1 below ``hot_c``, falling
    linearly to 0 at ``critical_c``. Battery (only while discharging): ``on_battery_factor``,
    ``low_battery_factor`` at or below ``low_battery_pct``, 0 at or below
    ``critical_battery_pct``. The two multiply."""
    f = 1.0
    if r.temp_c is not None and r.temp_c > cfg.hot_c:
        f *= max(0.0, (cfg.critical_c - r.temp_c) / (cfg.critical_c - cfg.hot_c))
    if r.discharging and r.battery_pct is not None:
        if r.battery_pct <= cfg.critical_battery_pct:
            f = 0.0
        elif r.battery_pct <= cfg.low_battery_pct:
            f *= cfg.low_battery_factor
        else:
            f *= cfg.on_battery_factor
    return f


class _Bucket:
    def __init__(self, rate: float, cap: float, now: float) -> None:
        self.rate, self.cap, self.level, self.at = rate, cap, cap, now

    def refill(self, now: float, factor: float) -> float:
        if now > self.at:
            self.level = min(self.cap, self.level + (now - self.at) * self.rate * factor)
        self.at = max(self.at, now)
        return self.level


class ActivityModel:
    """Moving averages of the active path: its latency, the gap between calls (end to
    end) and the candidate's run time. ``quiet`` is true when the path has been idle for
    ``idle_factor`` x its latency (at least ``min_idle_s``) and, going by the usual gap,
    the next call should not arrive before a candidate run ends (or the path has already
    been idle longer than its usual gap: a pause; or a run could never fit a usual gap, so
    waiting would only delay it)."""

    def __init__(self, cfg: ShadowConfig) -> None:
        self.cfg = cfg
        self.last_end: float | None = None
        self.active_s = 0.0
        self.gap_s: float | None = None
        self.candidate_s = 0.0

    def observe_active(self, now: float, latency_s: float) -> None:
        if self.last_end is not None:
            gap = now - self.last_end
            self.gap_s = gap if self.gap_s is None else self.gap_s + 0.1 * (gap - self.gap_s)
        self.active_s = latency_s if self.last_end is None else (
            self.active_s + 0.1 * (latency_s - self.active_s))
        self.last_end = now

    def observe_candidate(self, run_s: float) -> None:
        self.candidate_s = run_s if not self.candidate_s else (
            self.candidate_s + 0.2 * (run_s - self.candidate_s))

    def wait_s(self, now: float) -> float:
        """0 when a candidate run may start now, else how long to wait before asking again."""
        if self.last_end is None:
            return 0.0
        quiet = now - self.last_end
        need = max(self.cfg.min_idle_s, self.cfg.idle_factor * self.active_s)
        if quiet < need:
            return need - quiet
        if self.gap_s is None or quiet >= self.gap_s:
            return 0.0
        next_start = self.gap_s - self.active_s  # quiet time at which the next call is due
        if next_start - quiet >= self.candidate_s:
            return 0.0
        if next_start - need < self.candidate_s:
            return 0.0  # a run never fits a usual gap: waiting would not help, run now
        # it fits the next gap: wake once the next call is over and quiet again
        return self.gap_s - quiet + need


class ShadowBudget:
    def __init__(self, cfg: ShadowConfig, now: float, *,
                 power: Callable[[], PowerReading] | None = None) -> None:
        self.cfg = cfg
        self.samples = _Bucket(cfg.samples_per_minute / 60.0, cfg.sample_burst, now)
        self.drift_rows = _Bucket(cfg.drift_per_minute / 60.0, cfg.sample_burst, now)
        self.cpu = _Bucket(cfg.cpu_share, cfg.cpu_burst_s, now)
        self.duty = _Bucket(cfg.cpu_budget, cfg.burst_s, now)
        self.activity = ActivityModel(cfg)
        self._power = power or (lambda: read_power(Path(cfg.sysfs_root)))
        self._factor = 1.0
        self._hints_at: float | None = None
        self.reading = PowerReading()
        self.drops: Counter[str] = Counter()

    def factor(self, now: float) -> float:
        """The power-hint scale, re-read at most every ``hints_every_s``."""
        if self._hints_at is None or now - self._hints_at >= self.cfg.hints_every_s:
            self._hints_at = now
            try:
                self.reading = self._power()
            except Exception:
                self.reading = PowerReading()
            self._factor = hint_factor(self.reading, self.cfg)
        return self._factor

    @property
    def pace(self) -> float:
        """The samples per minute the sample bucket refills at now (before power hints)."""
        return self.samples.rate * 60.0

    def set_pace(self, samples_per_minute: float | None, now: float) -> float:
        """Refill the sample bucket at the pace the rollout stage asked for (None: the
        configured ``samples_per_minute``), at most the larger of ``max_samples_per_minute``
        and ``samples_per_minute``; returns the pace set. Only the pace changes: the CPU and duty buckets, never refunded, still
        decide whether a sample runs, so the budget wins over any pace."""
        ceiling = max(self.cfg.max_samples_per_minute, self.cfg.samples_per_minute)
        wanted = self.cfg.samples_per_minute if samples_per_minute is None else min(
            float(samples_per_minute), ceiling)
        if not wanted > 0:
            raise ValueError("samples_per_minute must be > 0")
        self.samples.refill(now, self.factor(now))  # time so far counts at the old pace
        self.samples.rate = wanted / 60.0
        return wanted

    def sample(self, now: float) -> bool:
        """Take a sample token if one is there (not taking one is not a drop)."""
        if self.samples.refill(now, self.factor(now)) >= 1.0:
            self.samples.level -= 1.0
            return True
        return False

    def drift_sample(self, now: float) -> bool:
        """Take a drift-only token (a call that feeds the drift sketches, no candidate run)."""
        if self.drift_rows.refill(now, self.factor(now)) >= 1.0:
            self.drift_rows.level -= 1.0
            return True
        return False

    def refund(self) -> None:
        self.samples.level = min(self.samples.cap, self.samples.level + 1.0)

    def admit(self, now: float) -> str | None:
        """None if a sample may run, else the reason it may not ("paused", "cpu", "duty")."""
        f = self.factor(now)
        self.cpu.refill(now, f)
        self.duty.refill(now, f)
        if f <= 0.0:
            return "paused"
        if self.cpu.level <= 0.0:
            return "cpu"
        if self.duty.level <= 0.0:
            return "duty"
        return None

    def spend(self, wall_s: float, cpu_s: float) -> None:
        self.duty.level -= max(0.0, wall_s)
        self.cpu.level -= max(0.0, cpu_s)
        self.activity.observe_candidate(max(0.0, wall_s))

    def drop(self, reason: str) -> None:
        self.drops[reason] += 1
