"""Input drift on known distributions: PSI and KS agree with their definitions, an unshifted
live stream is stable, a shifted one is flagged; reference statistics are built from the
golden data into the bundle and read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device_agent.drift import DriftSketch, ks_2samp, psi, psi_level
from model_bundles.builder import build_bundle
from model_bundles.input_stats import (
    INPUT_STATS_FILE,
    InputStats,
    InputStatsError,
    compute_input_stats,
)
from model_bundles.keys import generate_keypair, load_public_key
from model_bundles.manifest import TensorSpec, canonical_json
from model_bundles.verify import verify_bundle

SPEC = [TensorSpec("x", "float32", ("N", 4))]


def reference(rows: int = 400, seed: int = 0) -> InputStats:
    x = np.random.default_rng(seed).standard_normal((rows, 4)).astype(np.float32)
    return compute_input_stats(SPEC, {"x": x})


def test_psi_matches_its_formula_and_reads_with_conventional_levels() -> None:
    assert psi(np.array([0.5, 0.5]), np.array([0.25, 0.75])) == pytest.approx(
        -0.25 * np.log(0.5) + 0.25 * np.log(1.5))
    assert psi(np.array([0.2] * 5), np.array([0.2] * 5)) == 0.0
    assert psi_level(0.05) == "stable" and psi_level(0.15) == "moderate"
    assert psi_level(0.25) == "drifted"


def test_ks_matches_scipy_on_known_samples() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal(200), rng.normal(0.3, 1.0, 150)
    d, p = ks_2samp(x, y)
    ref = stats.ks_2samp(x, y, method="asymp")
    assert d == pytest.approx(ref.statistic)
    assert p == pytest.approx(ref.pvalue, abs=0.02)


def test_same_distribution_is_not_drifted_and_a_shifted_one_is() -> None:
    ref = reference()
    rng = np.random.default_rng(7)
    same, shifted = DriftSketch(ref), DriftSketch(ref)
    for _ in range(50):
        same.update({"x": rng.standard_normal((8, 4))})
        shifted.update({"x": rng.standard_normal((8, 4)) + np.array([0, 0, 1.0, 0])})
    ok, bad = same.report()["x"], shifted.report()["x"]
    assert not ok.drifted and ok.psi < 0.1 and ok.ks_pvalue > 0.05
    assert bad.drifted and bad.psi > 0.2 and bad.ks_pvalue < 0.05 and bad.ks_stat > ok.ks_stat


def test_sketch_is_bounded_reports_only_with_enough_rows_and_resets() -> None:
    ref = reference()
    sk = DriftSketch(ref, reservoir=64)
    sk.update({"x": np.zeros((5, 4))})
    assert sk.report() == {}  # fewer than 20 rows
    for _ in range(100):
        sk.update({"x": np.random.default_rng(2).standard_normal((10, 4))})
    assert sk._inputs["x"].reservoir.shape == (64, 4) and sk.rows("x") == 1005
    assert "x" in sk.report()
    sk.reset()
    assert sk.rows("x") == 0 and sk.report() == {}


def test_wide_inputs_are_summarised_by_their_row_mean() -> None:
    spec = [TensorSpec("img", "float32", ("N", 3, 8, 8))]
    imgs = np.random.default_rng(0).random((50, 3, 8, 8)).astype(np.float32)
    stats = compute_input_stats(spec, {"img": imgs})
    ref = stats.inputs["img"]
    assert ref.mode == "row_mean" and len(ref.features) == 1
    sk = DriftSketch(stats)
    for _ in range(5):
        sk.update({"img": np.random.default_rng(1).random((10, 3, 8, 8)) + 0.5})
    assert sk.report()["img"].drifted


def test_input_stats_round_trip_and_corrupt_files_are_refused() -> None:
    stats = reference()
    assert InputStats.from_bytes(stats.to_bytes()) == stats
    obj = stats.to_dict()
    obj["inputs"]["x"]["proportions"][0] = [1.0]
    with pytest.raises(InputStatsError):
        InputStats.from_bytes(canonical_json(obj))
    with pytest.raises(InputStatsError):
        InputStats.from_bytes(b"{not json")


def test_bundle_built_with_golden_data_carries_verified_input_stats(
    tmp_path: Path, sample_onnx: Path
) -> None:
    priv, pub = generate_keypair(tmp_path / "keys")
    golden = tmp_path / "golden.npz"
    np.savez(golden, features=np.random.default_rng(0).standard_normal((40, 16)).astype(
        np.float32))
    m = build_bundle([sample_onnx], name="s", version="1.0.0", key_path=priv,
                     out=tmp_path / "s.efb", golden=golden, task="classifier")
    assert m.input_stats == INPUT_STATS_FILE and m.file(INPUT_STATS_FILE).size > 0
    vb = verify_bundle(tmp_path / "s.efb", [load_public_key(pub)])
    assert vb.manifest.input_stats == INPUT_STATS_FILE
    m2 = build_bundle([sample_onnx], name="s", version="1.0.1", key_path=priv,
                      out=tmp_path / "s2.efb")  # generated golden: no reference stats
    assert m2.input_stats is None and "input_stats" not in m2.to_dict()
