"""Telemetry percentiles and the on-disk outbox."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device_agent.outbox import Outbox
from device_agent.telemetry import LatencyWindow, TelemetryRecorder, latency_percentiles


def test_percentiles_over_a_known_distribution() -> None:
    rec = TelemetryRecorder()
    for ms in range(1, 101):
        rec.record(float(ms))
    rec.record_error()
    st = rec.snapshot()
    assert st.inferences == 100 and st.errors == 1
    assert st.latency_ms == {"p50": 50.5, "p95": 95.05, "p99": 99.01}
    nxt = rec.snapshot()
    assert nxt.inferences == 0 and nxt.latency_ms is None
    assert nxt.total_inferences == 100 and nxt.total_errors == 1


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 4095, 4096])
def test_latency_percentiles_equal_numpys_linear_method(n: int) -> None:
    rng = np.random.default_rng(n)
    for values in (rng.random(n), rng.exponential(3.0, n), np.round(rng.random(n) * 9, 2)):
        want = np.percentile(values, [50, 95, 99])
        assert latency_percentiles(values) == tuple(float(v) for v in want)


def test_a_telemetry_window_does_not_import_numpy_ma() -> None:
    """np.percentile's first call imports numpy.ma (~2 MiB resident, bench/README.md)."""
    code = ("import sys; from device_agent.telemetry import TelemetryRecorder; "
            "r = TelemetryRecorder(); [r.record(float(i)) for i in range(500)]; "
            "assert r.snapshot().latency_ms; print('numpy.ma' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_latency_window_keeps_only_the_most_recent_values() -> None:
    w = LatencyWindow(capacity=10)
    for ms in range(100):
        w.add(float(ms))
    assert len(w) == 10
    assert w.percentiles()["p50"] == 94.5  # type: ignore[index]


def test_outbox_records_survive_a_restart_until_acknowledged(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox")
    a = box.put("t/1", b"one")
    b = box.put("t/2", b"two")
    box.ack(a)
    reopened = Outbox(tmp_path / "outbox")
    pending = reopened.pending()
    assert [(r.seq, r.topic, r.payload) for r in pending] == [(b, "t/2", b"two")]
    assert reopened.put("t/3", b"three") == b + 1


def test_outbox_over_budget_drops_the_oldest_and_counts_it(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox", budget_bytes=25)
    for _ in range(4):
        box.put("t", b"x" * 8)  # 10 bytes per record
    assert len(box) == 2
    assert box.dropped == 2
    assert [r.seq for r in box.pending()] == [3, 4]
    assert Outbox(tmp_path / "outbox", budget_bytes=25).dropped == 2
