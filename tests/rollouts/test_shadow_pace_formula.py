"""The shadow pace a stage asks of each device (``fleet_server.rollouts.pace``, pure)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleet_server.rollouts.pace import (
    DEADLINE_SHARE,
    MAX_PACE,
    MIN_PACE,
    SAMPLE_GRID,
    design_value,
    samples_needed,
    samples_to_promote,
    shadow_pace,
)
from fleet_server.rollouts.plan import Plan, Stage
from fleet_server.rollouts.sequential import interval

DOCS_SEQ = {"alpha": 0.05, "beta": 0.05, "prior_strength": 100,
            "agreement": {"halt_below": 0.97, "promote_above": 0.99},
            "error_rate": {"halt_above": 0.02, "promote_below": 0.01}}


def _stage(gates: dict[str, Any], deadline_s: float = 900) -> Stage:
    return Plan.from_dict({"stages": [
        {"name": "shadow", "kind": "shadow", "percent": 5, "deadline_s": deadline_s,
         "gates": gates},
        {"name": "all", "kind": "canary", "percent": 100}]}).stages[0]


def test_sequential_samples_are_where_the_gates_interval_first_promotes_a_good_candidate(
) -> None:
    stage = _stage({"min_samples": 0, "sequential": DOCS_SEQ})
    seq = stage.gates.sequential
    assert seq is not None
    for gate in seq.gates:
        n = samples_to_promote(gate, seq)
        value = design_value(gate) * gate.scale
        # halfway from the promote line to the best value (1 for agreement, 0 for errors)
        assert value == pytest.approx((gate.promote + 1) / 2 if gate.higher_is_better
                                      else gate.promote / 2)
        kw = {"higher_is_better": gate.higher_is_better, "promote": gate.promote,
              "halt": gate.halt, "alpha": seq.alpha, "beta": seq.beta,
              "prior_strength": seq.prior_strength, "scale": gate.scale}
        # the gate's own decision function passes at n and not on the grid point before it
        assert interval(value * n, n, **kw).decision == "pass"
        before = SAMPLE_GRID[np.searchsorted(SAMPLE_GRID, n) - 1]
        assert interval(value * before, before, **kw).decision == "continue"
    assert samples_needed(stage) == max(samples_to_promote(g, seq) for g in seq.gates)


def test_pace_is_the_needed_samples_shared_by_the_devices_over_half_the_deadline() -> None:
    stage = _stage({"min_samples": 0, "sequential": DOCS_SEQ}, deadline_s=900)
    needed = samples_needed(stage)
    for devices in (3, 10, 50):
        expected = math.ceil(needed / (devices * DEADLINE_SHARE * 900 / 60))
        assert shadow_pace(stage, devices) == min(MAX_PACE, max(MIN_PACE, expected))
    # a fixed gate needs its min_samples: 2000 over 3 devices in 5 of the 10 minutes
    fixed = _stage({"min_samples": 2000}, deadline_s=600)
    assert samples_needed(fixed) == 2000
    assert shadow_pace(fixed, 3) == math.ceil(2000 / (3 * 5))
    # more devices or a longer deadline ask less of each device
    assert shadow_pace(stage, 10) < shadow_pace(stage, 3)
    assert shadow_pace(_stage({"min_samples": 0, "sequential": DOCS_SEQ}, 3600), 3) \
        < shadow_pace(stage, 3)


def test_pace_is_bounded_and_per_report_gates_do_not_change_it() -> None:
    strict = {"agreement": {"halt_below": 0.998, "promote_above": 0.999}}
    assert shadow_pace(_stage({"min_samples": 0, "sequential": strict}, 60), 1) == MAX_PACE
    assert shadow_pace(_stage({"min_samples": 10}, 86400), 1000) == MIN_PACE
    per_report = {"latency_ratio": {"halt_above": 1.5, "promote_below": 1.2},
                  "drift": {"halt_above": 0.5, "promote_below": 0.2}}
    plain = _stage({"min_samples": 200})
    assert samples_needed(_stage({"min_samples": 200, "sequential": per_report})) \
        == samples_needed(plain) == 200
    with pytest.raises(ValueError, match="at least one device"):
        shadow_pace(plain, 0)


def test_the_worked_example_in_docs_shadow_md_is_what_the_code_computes() -> None:
    text = " ".join((Path(__file__).resolve().parents[2] / "docs" / "shadow.md")
                    .read_text().split())
    stage = _stage({"min_samples": 0, "sequential": DOCS_SEQ}, deadline_s=900)
    seq = stage.gates.sequential
    assert seq is not None
    agreement, errors = (samples_to_promote(g, seq) for g in seq.gates)
    needed = samples_needed(stage)
    exact = needed / (3 * DEADLINE_SHARE * 900 / 60)
    for figure in (f"after {agreement:,} samples", f"one failing 0.5% after {errors:,}",
                   f"`samples_needed` = {needed:,}",
                   f"Pace = {needed:,} / (3 x 0.5 x 900 / 60) = {exact:.1f}",
                   f"rounded up to {shadow_pace(stage, 3):g} samples a minute",
                   f"floor of {MIN_PACE:g}; on 2 devices, {shadow_pace(stage, 2):g}."):
        assert figure in text, figure
    assert shadow_pace(stage, 10) == MIN_PACE
