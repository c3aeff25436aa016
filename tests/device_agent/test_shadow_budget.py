"""The shadow budget as a pure policy, driven by a fake clock: the sample pace the stage
needs, the duty cycle and CPU token buckets, power hints read from a fake sysfs tree,
the adaptation (a sample dropped for want of a gap is taken later, never past the budget),
the idle prediction, and bad configuration refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_agent.shadow_budget import (
    ActivityModel,
    PowerReading,
    ShadowBudget,
    ShadowConfig,
    hint_factor,
    read_power,
)

NO_HINTS = PowerReading()


def simulate(cfg: ShadowConfig, *, seconds: float, calls_per_s: float, run_wall_s: float,
             run_cpu_s: float, busy_every: int = 0,
             power: PowerReading = NO_HINTS) -> tuple[ShadowBudget, dict[str, float]]:
    """Offer calls at a steady rate; every admitted sample runs at once for the given wall
    and CPU time; every ``busy_every``-th sample finds no gap (dropped as busy, refunded)."""
    t = 0.0
    budget = ShadowBudget(cfg, t, power=lambda: power)
    done = {"samples": 0, "wall": 0.0, "cpu": 0.0, "sampled": 0}
    step = 1.0 / calls_per_s
    while t < seconds:
        t += step
        if not budget.sample(t):
            continue
        done["sampled"] += 1
        refused = budget.admit(t)
        if refused is not None:
            budget.drop(refused)
            continue
        if busy_every and done["sampled"] % busy_every == 0:
            budget.drop("busy")
            budget.refund()
            continue
        budget.spend(run_wall_s, run_cpu_s)
        done["samples"] += 1
        done["wall"] += run_wall_s
        done["cpu"] += run_cpu_s
        t += run_wall_s
    return budget, done


def test_fast_traffic_is_sampled_at_the_stage_pace_not_at_every_call() -> None:
    cfg = ShadowConfig(samples_per_minute=120, sample_burst=4)
    budget, done = simulate(cfg, seconds=60, calls_per_s=1000, run_wall_s=0.0005,
                            run_cpu_s=0.0005)
    # 2 per second for 60 s plus the initial burst, out of 60,000 calls
    assert 120 <= done["samples"] <= 120 + 4
    assert sum(budget.drops.values()) == 0  # pacing is not dropping


def test_the_servers_pace_sets_the_sample_bucket_up_to_the_devices_ceiling() -> None:
    cfg = ShadowConfig(samples_per_minute=120, max_samples_per_minute=600)
    budget = ShadowBudget(cfg, 0.0, power=lambda: NO_HINTS)
    assert budget.set_pace(300, 0.0) == 300 and budget.samples.rate == 5.0
    assert budget.set_pace(3000, 0.0) == 600  # the device's ceiling, not the ask
    assert budget.set_pace(None, 0.0) == 120  # no pace in the instruction: configured
    # a device configured for more than the ceiling accepts up to its configured pace
    fast = ShadowBudget(ShadowConfig(samples_per_minute=6000), 0.0, power=lambda: NO_HINTS)
    assert fast.set_pace(3600, 0.0) == 3600
    # the time before a change counts at the old pace: 1 s at 60/min, then 1 s at 600/min
    slow = ShadowBudget(ShadowConfig(samples_per_minute=60, sample_burst=50), 0.0,
                        power=lambda: NO_HINTS)
    slow.samples.level = 0.0
    slow.set_pace(600, 1.0)
    assert slow.samples.refill(2.0, 1.0) == pytest.approx(1.0 + 10.0)
    with pytest.raises(ValueError, match="max_samples_per_minute"):
        ShadowConfig(max_samples_per_minute=0)


def test_a_fast_pace_never_runs_past_the_duty_cycle() -> None:
    cfg = ShadowConfig(samples_per_minute=6000, cpu_budget=0.1, cpu_share=1.0)
    budget, done = simulate(cfg, seconds=60, calls_per_s=1000, run_wall_s=0.01,
                            run_cpu_s=0.0)
    # 100 samples a second asked; 10 ms runs at a 10% duty cycle allow about 10 a second
    assert done["wall"] <= 0.1 * 60 + cfg.burst_s + 0.01
    assert budget.drops["duty"] > 0 and done["samples"] < 6000 / 4


def test_duty_cycle_bounds_the_candidates_wall_time_and_counts_the_drops() -> None:
    cfg = ShadowConfig(samples_per_minute=6000, cpu_budget=0.1, burst_s=0.05, cpu_share=1.0,
                       cpu_burst_s=1.0)
    budget, done = simulate(cfg, seconds=100, calls_per_s=200, run_wall_s=0.05,
                            run_cpu_s=0.001)
    # one run may overdraw the bucket by at most its own length
    assert done["wall"] <= 0.1 * (100 + done["wall"]) + 0.05 + 0.05
    assert budget.drops["duty"] > 0 and budget.drops["cpu"] == 0
    assert done["samples"] < done["sampled"]


def test_cpu_token_bucket_bounds_measured_cpu_time_separately_from_wall_time() -> None:
    cfg = ShadowConfig(samples_per_minute=6000, cpu_budget=1.0, burst_s=1.0, cpu_share=0.05,
                       cpu_burst_s=0.05)
    budget, done = simulate(cfg, seconds=100, calls_per_s=200, run_wall_s=0.02,
                            run_cpu_s=0.02)
    assert done["cpu"] <= 0.05 * (100 + done["wall"]) + 0.05 + 0.02
    assert budget.drops["cpu"] > 0 and budget.drops["duty"] == 0


def test_samples_lost_to_a_busy_active_path_are_taken_later_up_to_the_needed_pace() -> None:
    cfg = ShadowConfig(samples_per_minute=120, sample_burst=4)
    budget, done = simulate(cfg, seconds=60, calls_per_s=100, run_wall_s=0.001,
                            run_cpu_s=0.001, busy_every=2)
    # half of the sampled calls found no gap; their tokens came back, so the stage still
    # got (about) its 120 samples in the minute rather than 60
    assert budget.drops["busy"] >= 100
    assert done["samples"] >= 115


def test_adaptation_never_raises_sampling_past_the_cpu_budget() -> None:
    cfg = ShadowConfig(samples_per_minute=600, cpu_share=0.02, cpu_burst_s=0.05)
    budget, done = simulate(cfg, seconds=60, calls_per_s=100, run_wall_s=0.05,
                            run_cpu_s=0.05, busy_every=3)
    assert done["samples"] < 600 / 2  # the pace asks for 600 a minute; the budget says no
    assert done["cpu"] <= 0.02 * (60 + done["wall"]) + 0.05 + 0.05
    assert budget.drops["cpu"] > 0


def write_sysfs(root: Path, *, temp_mc: str | None = None,
                battery: tuple[str, str] | None = None) -> Path:
    if temp_mc is not None:
        z = root / "thermal" / "thermal_zone0"
        z.mkdir(parents=True)
        (z / "temp").write_text(temp_mc + "\n")
    if battery is not None:
        b = root / "power_supply" / "BAT0"
        b.mkdir(parents=True)
        (b / "type").write_text("Battery\n")
        (b / "capacity").write_text(battery[0] + "\n")
        (b / "status").write_text(battery[1] + "\n")
        ac = root / "power_supply" / "AC"
        ac.mkdir()
        (ac / "type").write_text("Mains\n")
    return root


def test_absent_thermal_and_battery_files_leave_the_budget_whole(tmp_path: Path) -> None:
    r = read_power(tmp_path / "no-such-sysfs")
    assert r == PowerReading(None, None, False)
    assert hint_factor(r, ShadowConfig()) == 1.0


def test_unreadable_zone_is_skipped_and_the_hottest_readable_one_counts(tmp_path: Path) -> None:
    write_sysfs(tmp_path, temp_mc="not a number")
    z = tmp_path / "thermal" / "thermal_zone1"
    z.mkdir()
    (z / "temp").write_text("77500\n")
    assert read_power(tmp_path).temp_c == 77.5


@pytest.mark.parametrize(("temp_mc", "battery", "factor"), [
    ("45000", ("80", "Charging"), 1.0),
    ("77500", None, 0.5),  # halfway from hot (70) to critical (85)
    ("90000", None, 0.0),
    (None, ("80", "Discharging"), 0.5),
    (None, ("25", "Discharging"), 0.25),
    (None, ("10", "Discharging"), 0.0),
    (None, ("10", "Full"), 1.0),
    ("77500", ("80", "Discharging"), 0.25),
])
def test_hot_or_discharging_device_lowers_the_rate(
    tmp_path: Path, temp_mc: str | None, battery: tuple[str, str] | None, factor: float
) -> None:
    cfg = ShadowConfig(samples_per_minute=120, sample_burst=1)
    reading = read_power(write_sysfs(tmp_path, temp_mc=temp_mc, battery=battery))
    assert hint_factor(reading, cfg) == pytest.approx(factor)
    budget, done = simulate(cfg, seconds=600, calls_per_s=50, run_wall_s=0.001,
                            run_cpu_s=0.001, power=reading)
    if factor == 0.0:  # critical: shadow pauses; samples taken before are refused
        assert done["samples"] == 0
    else:
        assert done["samples"] == pytest.approx(1200 * factor, rel=0.05)


def test_power_hints_are_read_from_the_configured_directory_at_most_every_interval(
    tmp_path: Path,
) -> None:
    root = write_sysfs(tmp_path, temp_mc="90000")
    cfg = ShadowConfig(sysfs_root=str(root), hints_every_s=10.0)
    budget = ShadowBudget(cfg, 0.0)
    assert budget.admit(0.0) == "paused" and budget.reading.temp_c == 90.0
    (root / "thermal" / "thermal_zone0" / "temp").write_text("40000\n")
    assert budget.admit(5.0) == "paused"  # not re-read yet
    assert budget.admit(10.0) is None and budget.factor(10.0) == 1.0


def test_idle_prediction_runs_in_a_long_enough_gap_and_waits_out_a_short_one() -> None:
    act = ActivityModel(ShadowConfig(idle_factor=2.0, min_idle_s=0.0005))
    assert act.wait_s(0.0) == 0.0  # no traffic yet
    t = 0.0
    for _ in range(50):  # a call every 10 ms, each 1 ms long
        t += 0.010
        act.observe_active(t, 0.001)
    act.observe_candidate(0.002)
    assert act.wait_s(t + 0.001) == pytest.approx(0.001)  # quiet 1 ms < 2x the latency
    assert act.wait_s(t + 0.002) == 0.0  # next call due in ~7 ms, the run takes 2 ms
    for _ in range(100):  # the candidate turns slower: 6 ms a run
        act.observe_candidate(0.006)
    assert act.wait_s(t + 0.002) == 0.0  # still fits before the next call (due at 9 ms)
    # 4 ms in, it would still run when the next call comes: wake after that call, once
    # the path is quiet again (10 ms gap - 4 ms + 2 ms quiet)
    assert act.wait_s(t + 0.004) == pytest.approx(0.008, abs=1e-6)
    assert act.wait_s(t + 0.010) == 0.0  # idle past the usual gap: a pause
    for _ in range(100):  # 8 ms a run: never fits a 10 ms gap after 2 ms of quiet
        act.observe_candidate(0.008)
    assert act.wait_s(t + 0.002) == 0.0  # waiting would not help


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"cpu_share": 0.0}, "cpu_share"),
    ({"cpu_budget": 1.5}, "cpu_budget"),
    ({"samples_per_minute": 0}, "samples_per_minute"),
    ({"sample_burst": 0.5}, "sample_burst"),
    ({"hot_c": 90.0, "critical_c": 80.0}, "hot_c"),
    ({"low_battery_pct": 10.0, "critical_battery_pct": 20.0}, "critical_battery_pct"),
    ({"cpu_burst_s": -1.0}, "cpu_burst_s"),
])
def test_bad_budget_configuration_is_refused_with_the_field_named(
    kwargs: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ShadowConfig(**kwargs)
