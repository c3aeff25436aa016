"""The shadow pace a stage asks of each of its devices (pure: values in, values out).

A shadow stage's gates need a number of samples before they can decide; the stage has a
cohort of devices and a deadline. The server tells each shadow device, in its signed
instruction (``shadow_samples_per_minute``), the pace that collects those samples in
``DEADLINE_SHARE`` of the deadline when the cohort shares the work:

    pace = samples_needed / (devices x DEADLINE_SHARE x deadline_s / 60)

bounded to ``[MIN_PACE, MAX_PACE]`` samples per minute. ``samples_needed`` is the largest of
the stage's ``min_samples`` (a fixed gate counts samples) and, for each sequential gate
observed once per sample (``agreement``, ``error_rate``), the samples its confidence
sequence needs to promote a good candidate: one whose true value lies halfway between the
promote line and the best value (1 for agreement, 0 for an error rate), on the expected
path (``S = value x n``). Gates observed once per report (``latency_ratio``, ``drift``) do
not depend on the pace. docs/shadow.md has the formula with a worked example.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from fleet_server.rollouts.plan import Sequential, SequentialGate, Stage
from fleet_server.rollouts.sequential import confidence_sequence
from ota.instructions import MAX_SHADOW_PACE

MIN_PACE = 120.0
"""Samples per minute, the device default: asking less saves the active path nothing
measurable (``bench/shadow`` meets its latency goals at 120) and would only slow the stage
down."""
MAX_PACE = MAX_SHADOW_PACE
"""Samples per minute (100 a second, the most an instruction may carry). The server says
what the stage needs; the device caps it with its own ceiling (600 a minute by default:
above that too many active calls follow a candidate run, docs/shadow.md "Why a pace") and
its CPU and duty-cycle budget, and reports what it achieved."""
DEADLINE_SHARE = 0.5
"""Collect the samples in half the deadline: room for the candidate's download and golden
gate, for devices that report late, and for the sampling's own randomness."""
PER_SAMPLE_METRICS = ("agreement", "error_rate")
"""Sequential gates with one observation per shadow sample (the others: per report)."""
SAMPLES_CAP = 10_000_000
"""Beyond this the sequential gate is taken as needing "very many" samples."""

SAMPLE_GRID = np.unique(np.ceil(np.geomspace(1, SAMPLES_CAP, 800)))


def design_value(gate: SequentialGate) -> float:
    """The good candidate the pace is sized for, on [0, 1]: halfway from the promote line to
    the best value."""
    promote = gate.promote / gate.scale
    return (promote + 1.0) / 2 if gate.higher_is_better else promote / 2


@functools.lru_cache(maxsize=256)  # the driver asks every tick; plans are frozen values
def samples_to_promote(gate: SequentialGate, seq: Sequential) -> int:
    """Samples after which the gate's confidence sequence (the plan's ``alpha``, ``beta``
    and prior, as ``sequential.interval`` builds it) promotes a candidate at
    ``design_value`` on its expected path; ``SAMPLES_CAP`` when it never does before."""
    value = design_value(gate)
    promote, halt = gate.promote / gate.scale, gate.halt / gate.scale
    mean = min(max((promote + halt) / 2, 0.01), 0.99)
    a_low, a_up = (seq.alpha, seq.beta) if gate.higher_is_better else (seq.beta, seq.alpha)
    lower, upper = confidence_sequence(value * SAMPLE_GRID, SAMPLE_GRID, alpha_lower=a_low,
                                       alpha_upper=a_up, prior_mean=mean,
                                       prior_strength=seq.prior_strength)
    passed = lower > promote if gate.higher_is_better else upper < promote
    return int(SAMPLE_GRID[np.argmax(passed)]) if passed.any() else SAMPLES_CAP


def samples_needed(stage: Stage) -> int:
    """The samples the stage's gates need from the whole cohort (see the module doc)."""
    needed = stage.gates.min_samples
    seq = stage.gates.sequential
    if seq is None:
        return needed
    for gate in seq.gates:
        if gate.metric in PER_SAMPLE_METRICS:
            needed = max(needed, samples_to_promote(gate, seq))
    return needed


def shadow_pace(stage: Stage, devices: int) -> float:
    """Samples per minute each of ``devices`` shadow devices should collect, bounded to
    ``[MIN_PACE, MAX_PACE]``."""
    if devices < 1:
        raise ValueError("a shadow stage needs at least one device to pace")
    minutes = DEADLINE_SHARE * stage.deadline_s / 60.0
    pace = samples_needed(stage) / (devices * minutes)
    return float(min(MAX_PACE, max(MIN_PACE, math.ceil(pace))))
