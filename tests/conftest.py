"""Fixtures shared by every test package: real models, made here, no downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_bundles.samples import write_sample_model


@pytest.fixture(scope="session")
def sample_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deterministic sample classifier (input ``features`` [batch, 16])."""
    return write_sample_model(tmp_path_factory.mktemp("sample") / "sample.onnx")


@pytest.fixture(scope="session")
def digits_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A logistic-regression classifier trained on scikit-learn's bundled digits data,
    exported to ONNX (input ``X`` [None, 64] float32; outputs ``label`` int64 and
    ``probabilities`` float32)."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32) / 16.0
    clf = LogisticRegression(max_iter=300).fit(x, y)
    onx = to_onnx(
        clf,
        x[:1],
        options={id(clf): {"zipmap": False}},
        target_opset=17,
        initial_types=None,
    )
    path = tmp_path_factory.mktemp("digits") / "digits.onnx"
    path.write_bytes(onx.SerializeToString())
    return path


@pytest.fixture(scope="session")
def digits_samples() -> np.ndarray:
    """Real digits inputs (float32, scaled to [0, 1]) for predict calls."""
    from sklearn.datasets import load_digits

    x, _ = load_digits(return_X_y=True)
    return (x[:32] / 16.0).astype(np.float32)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with real processes or a browser (markers ``e2e``, ``browser``) run first,
    each half in collection order. ``scripts/test.sh`` runs the suite on two xdist workers,
    a module at a time (``--dist loadscope --no-loadscope-reorder``): the long modules start
    at once and the short ones fill in, so no long test is left running alone at the end."""
    slow = {item.path for item in items
            if item.get_closest_marker("e2e") or item.get_closest_marker("browser")}
    items.sort(key=lambda item: item.path not in slow)
