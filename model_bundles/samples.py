"""A small, deterministic sample model for demos and tests (no downloads).

The sample is a two-layer perceptron classifier over 16 features with 4 classes, built
with ``onnx.helper`` from weights drawn with a fixed seed, so every run writes the same
bytes. It has a symbolic batch dimension and two outputs (class scores and label).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SAMPLE_FEATURES = 16
SAMPLE_CLASSES = 4
SAMPLE_INPUT = "features"
SAMPLE_OUTPUTS = ("scores", "label")


def sample_model(seed: int = 0, hidden: int = 32) -> onnx.ModelProto:
    """Return the sample classifier as an ONNX model (opset 17, IR 8)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((SAMPLE_FEATURES, hidden)).astype(np.float32) * 0.5
    b1 = rng.standard_normal(hidden).astype(np.float32) * 0.1
    w2 = rng.standard_normal((hidden, SAMPLE_CLASSES)).astype(np.float32) * 0.5
    b2 = rng.standard_normal(SAMPLE_CLASSES).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("MatMul", [SAMPLE_INPUT, "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["z0"]),
        helper.make_node("Add", ["z0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=-1),
        helper.make_node("ArgMax", ["scores"], ["label"], axis=-1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "edgefleet_sample",
        [helper.make_tensor_value_info(SAMPLE_INPUT, TensorProto.FLOAT, ["batch", SAMPLE_FEATURES])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", SAMPLE_CLASSES]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(b2, "b2"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgefleet"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_sample_model(path: Path, seed: int = 0) -> Path:
    """Write the sample classifier to ``path`` and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(sample_model(seed), str(path))
    return path
