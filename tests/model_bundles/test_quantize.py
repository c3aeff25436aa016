"""``model-bundle quantize``: real ONNX Runtime quantisation, accepted only when it agrees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from model_bundles.cli import main
from model_bundles.quantize import QuantizeRefusedError, agreement, quantize_model


def _outlier_classifier(path: Path) -> tuple[Path, np.ndarray]:
    """An MLP classifier whose input carries one huge constant feature (1000) next to the
    informative ones in [0, 1]: a wide activation range, as real sensor/LLM features have.
    Per-tensor int8 activation scales sized for 1000 round every informative value to 0."""
    rng = np.random.default_rng(7)
    w1 = rng.standard_normal((16, 64)).astype(np.float32)
    w1[15, :] = 0.0  # the outlier feature carries no information
    w2 = rng.standard_normal((64, 4)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=-1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=-1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "outlier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    x = rng.random((64, 16)).astype(np.float32)
    x[:, 15] = 1000.0
    return path, x


def test_dynamic_quantisation_of_the_digits_classifier_is_accepted_and_written(
    tmp_path: Path, digits_onnx: Path, digits_samples: np.ndarray
) -> None:
    calib = tmp_path / "calib.npz"
    np.savez(calib, X=digits_samples)
    out = tmp_path / "digits-int8.onnx"
    report = quantize_model(digits_onnx, out, mode="dynamic", calibration=calib)
    assert report.accepted and report.metric == "top1"
    assert report.agreement >= 0.98 and report.samples == 32 and report.data == "calibration"
    assert out.is_file() and onnx.load(out).graph.node
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_model_whose_top1_collapses_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    model, x = _outlier_classifier(tmp_path / "outlier.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=x)
    out = tmp_path / "outlier-int8.onnx"
    with pytest.raises(QuantizeRefusedError) as info:
        quantize_model(model, out, mode="static", calibration=calib)
    report = info.value.report
    assert report.metric == "top1" and report.agreement < 0.9
    assert "top-1 agreement" in str(info.value)
    assert not out.exists()


def test_force_writes_a_refused_model_and_says_it_was_forced(tmp_path: Path) -> None:
    model, x = _outlier_classifier(tmp_path / "outlier.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=x)
    out = tmp_path / "forced.onnx"
    report = quantize_model(model, out, mode="static", calibration=calib, force=True)
    assert report.forced and not report.accepted and out.is_file()


def test_quantize_cli_refuses_with_the_reason_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, x = _outlier_classifier(tmp_path / "outlier.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=x)
    out = tmp_path / "q.onnx"
    rc = main(["quantize", str(model), "--out", str(out), "--mode", "static",
               "--calibration", str(calib)])
    err = capsys.readouterr().err
    assert rc == 1 and "refused" in err and "top-1 agreement" in err and "--force" in err
    assert not out.exists()


def test_quantize_cli_accepts_the_sample_mlp_on_generated_data(
    tmp_path: Path, sample_onnx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s8.onnx"
    rc = main(["quantize", str(sample_onnx), "--out", str(out), "--min-agreement", "0.9"])
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file()
    assert "size ratio" in text and "latency ratio" in text and "generated" in text


def test_agreement_uses_cosine_for_a_regressor() -> None:
    ref = {"y": np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)}
    got = {"y": np.array([[1.0, 0.0], [0.0, -2.0]], np.float32)}
    m = agreement(ref, got, classifier=False)
    assert m["metric"] == "cosine" and m["agreement"] == pytest.approx(0.0)
    assert m["max_abs_error"] == pytest.approx(4.0)
