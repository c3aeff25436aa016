"""The pace a shadow instruction carries (``shadow_samples_per_minute``, signed) sets the
rate of the agent's sample bucket, is kept in the device record across restarts, is capped
by the device's own ceiling, and never lets a sample past the CPU and duty-cycle budget."""

from __future__ import annotations

import numpy as np

from ota.updater.record import ShadowRecord
from ota.updater.transfer import Role

from .conftest import Rig


def _shadowing(rig: Rig, pace: float | None) -> None:
    path, ref = rig.build("2.0.0")
    rig.agent._handle_desired(rig.instruction(None, shadow=ref, rate=1.0, pace=pace))
    rig.deliver(path, ref)
    assert rig.errors() == [] and rig.agent.shadow.candidate is not None


def test_the_instructed_pace_sets_the_sample_bucket_and_survives_a_restart(rig: Rig) -> None:
    default = rig.agent.shadow.config.samples_per_minute
    assert rig.agent.shadow.budget.pace == default  # no shadow instruction yet
    _shadowing(rig, pace=48.0)
    assert rig.agent.shadow.budget.pace == 48.0
    assert rig.agent.shadow.budget.samples.rate == 48.0 / 60
    rec = rig.agent.store.record.shadow
    assert rec is not None and rec.pace == 48.0 and rec.rate == 1.0

    # the same candidate at another pace: only the pace changes, nothing is fetched again
    rig.agent._handle_desired(rig.instruction(None, shadow=rec.ref, rate=1.0, pace=300.0))
    assert rig.agent.shadow.budget.pace == 300.0
    assert Role.SHADOW not in rig.agent.core.transfers
    assert rig.agent.store.record.shadow == ShadowRecord(rec.ref, 1.0, None, 300.0)

    agent = rig.restart()  # the record brings the pace back with the staged candidate
    assert agent.shadow.candidate is not None and agent.shadow.budget.pace == 300.0

    # an instruction without a pace (an older server) falls back to the configured one
    agent._handle_desired(rig.instruction(None, shadow=rec.ref, rate=1.0))
    assert agent.shadow.budget.pace == default
    assert agent.store.record.shadow == ShadowRecord(rec.ref, 1.0)
    agent.shadow.stop()


def test_a_pace_above_the_device_ceiling_is_capped_and_the_budget_still_wins(
        rig: Rig) -> None:
    ceiling = rig.agent.shadow.config.max_samples_per_minute
    _shadowing(rig, pace=ceiling * 5)
    runner = rig.agent.shadow
    assert runner.budget.pace == ceiling  # the device's ceiling, not the server's ask
    assert rig.agent.store.record.shadow is not None
    assert rig.agent.store.record.shadow.pace == ceiling * 5  # what was asked, on record

    # the duty cycle is spent (a candidate run of a whole second): a sample token is there,
    # yet the call is not run on the candidate; the drop is counted with its reason
    with runner._lock:
        runner.budget.spend(wall_s=1.0, cpu_s=0.0)
        tokens = runner.budget.samples.level
    assert tokens >= 1.0
    before = runner.total_samples
    x = np.random.default_rng(3).standard_normal((1, 16)).astype(np.float32)
    rig.agent.predict({"features": x})
    assert runner.drops_by_reason.get("duty") == 1
    assert runner.drain(10) and runner.total_samples == before  # nothing ran
    runner.stop()
