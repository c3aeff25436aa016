"""Shadow comparison math on known outputs, and a window's aggregate over many samples."""

from __future__ import annotations

import numpy as np
import pytest

from device_agent.shadow_stats import OutputMismatch, ShadowWindow, compare, pick_output


def test_classifier_comparison_counts_top1_agreement_and_score_delta_of_active_top1() -> None:
    active = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    cand = np.array([[0.5, 0.4, 0.1], [0.1, 0.2, 0.7]])  # row 0 agrees, row 1 does not
    c = compare("classifier", active, cand)
    assert c.rows == 2 and c.agree == 1
    assert c.score_delta_sum == pytest.approx((0.5 - 0.7) + (0.2 - 0.6))
    assert c.abs_err_sum == pytest.approx(0.2 + 0.2 + 0 + 0 + 0.4 + 0.4)
    assert c.elements == 6 and c.max_abs_error == pytest.approx(0.4)


def test_regressor_comparison_has_errors_and_cosine_but_no_top1() -> None:
    c = compare("regressor", np.array([1.0, 2.0, 2.0]), np.array([2.0, 4.0, 4.0]))
    assert c.agree is None and c.score_delta_sum is None
    assert c.rows == 1 and c.cosine_sum == pytest.approx(1.0)  # same direction
    assert c.max_abs_error == pytest.approx(2.0)


def test_embedding_cosine_is_averaged_per_row_with_zero_rows_defined() -> None:
    a = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    c = compare("embedding", a, b)
    assert c.cosine_sum == pytest.approx(0.0 + 1.0 + 0.0 - 1.0)


def test_outputs_of_different_shape_cannot_be_compared() -> None:
    with pytest.raises(OutputMismatch):
        compare("generic", np.zeros((2, 3)), np.zeros((2, 4)))


def test_window_aggregates_means_over_rows_and_resets() -> None:
    w = ShadowWindow("classifier", latency_reservoir=16)
    active = np.array([[0.9, 0.1]])
    for i in range(10):
        cand = np.array([[0.8, 0.2]]) if i < 8 else np.array([[0.3, 0.7]])
        w.add(compare("classifier", active, cand), active_ms=1.0 + i, candidate_ms=2.0)
    w.add_dropped(3)
    w.add_error()
    s = w.summary()
    assert s.samples == 10 and s.dropped == 3 and s.candidate_errors == 1
    assert s.top1_agreement == pytest.approx(0.8)
    assert s.score_delta_mean == pytest.approx((8 * -0.1 + 2 * -0.6) / 10)
    assert s.mae == pytest.approx((8 * 0.1 + 2 * 0.6) / 10)
    assert s.max_abs_error == pytest.approx(0.6)
    assert s.latency_ms_candidate == {"p50": 2.0, "p95": 2.0, "p99": 2.0}
    assert s.latency_ms_active is not None and s.latency_ms_active["p50"] == pytest.approx(5.5)
    w.reset()
    empty = w.summary()
    assert empty.samples == 0 and empty.mae is None and empty.latency_ms_active is None


def test_window_memory_is_bounded_by_the_latency_reservoir() -> None:
    w = ShadowWindow("regressor", latency_reservoir=32)
    c = compare("regressor", np.ones(3), np.ones(3))
    for i in range(5000):
        w.add(c, float(i % 100), 1.0)
    assert len(w._lat_a.values) == 32 and w._lat_a.seen == 5000
    assert w.summary().samples == 5000


def test_pick_output_takes_the_first_float_output_in_manifest_order() -> None:
    outs = {"label": np.array([1]), "scores": np.array([[0.1, 0.9]], np.float32)}
    assert pick_output(("label", "scores"), outs) == "scores"
    assert pick_output(("label",), outs) is None
