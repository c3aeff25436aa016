"""``device-agent run`` caps glibc's malloc arenas before its threads start and hands freed
C heap back once the agent goes quiet (``device_agent.heap``; issue 11, agent RSS): a
trim after start-up, none while work goes on, one when a burst of predicts stops. An
``Agent`` used as a library never touches its host process's heap."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from device_agent import heap
from device_agent.agent import Agent

from .agent_dirs import served_agent_dir

GLIBC = platform.libc_ver()[0] == "glibc"


def wait_until(predicate: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_idle_trim_waits_for_quiet_and_trims_once_per_burst() -> None:
    work = [0]
    t = heap.IdleTrim(lambda: work[0])
    assert t.poll() is False  # first poll: nothing to compare with yet
    assert t.poll() is True  # quiet since start: start-up garbage goes back
    assert [t.poll() for _ in range(3)] == [False] * 3  # still quiet: nothing new to trim
    for _ in range(3):  # steady work: never trimmed while it goes on
        work[0] += 1
        assert t.poll() is False
    assert t.poll() is True  # the burst stopped
    assert t.poll() is False
    assert t.trims == 2


@pytest.mark.skipif(not GLIBC, reason="mallopt and malloc_trim are glibc's")
def test_arena_cap_and_trim_take_effect_on_glibc() -> None:
    code = ("import json; from device_agent import heap; "
            "print(json.dumps([heap.limit_arenas(), isinstance(heap.trim(), bool)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, True]


def test_agent_run_trims_after_start_and_after_a_burst_of_predicts(
        tmp_path: Path, sample_onnx: Path) -> None:
    agent_dir = served_agent_dir(tmp_path / "agent", sample_onnx)
    x = {"features": np.full((1, 16), 0.1, np.float32)}
    with Agent(agent_dir, api_port=0, heap_trim=True) as agent:
        assert agent._heap is not None
        wait_until(lambda: agent._heap.trims == 1, "the trim after start")
        for _ in range(20):
            assert agent.predict(x).outputs
        wait_until(lambda: agent._heap.trims == 2, "the trim after the predicts")
        assert agent.recorder.total_inferences == 20
    assert Agent(agent_dir, api_port=0)._heap is None  # the default: no heap trimming
