"""Fixtures shared by every test package: real models, made here, no downloads."""

from __future__ import annotations

import json
from collections import defaultdict
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



# -- order: the longest modules first ----------------------------------------------------------
# ``scripts/test.sh`` runs the suite on two xdist workers, a module at a time (``--dist
# loadscope --no-loadscope-reorder``), in the order below: the longest modules start at once and
# the short ones fill in, so that no long module is left running alone at the end. The seconds
# each module took are in module_durations.json, written by a whole run with
# ``--store-module-durations``; a module not in it counts as long when it has real processes or
# a browser (markers ``e2e``, ``browser``), else as short. Stale figures only cost balance.

DURATIONS = Path(__file__).with_name("module_durations.json")
UNKNOWN_SLOW_S, UNKNOWN_FAST_S = 20.0, 1.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--store-module-durations", action="store_true",
                     help=f"write the seconds each module took to {DURATIONS.name}")


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    known = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    cost: dict[str, float] = {}
    for item in items:
        module = _module(item.nodeid)
        if module not in cost:
            cost[module] = UNKNOWN_FAST_S
        if module in known:
            cost[module] = known[module]
        elif item.get_closest_marker("e2e") or item.get_closest_marker("browser"):
            cost[module] = UNKNOWN_SLOW_S
    items.sort(key=lambda item: -cost[_module(item.nodeid)])  # stable within a module


_took: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _took[_module(report.nodeid)] += report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if not config.getoption("store_module_durations") or hasattr(config, "workerinput"):
        return  # written once, by the process that saw every report (xdist's controller)
    known = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    known.update({m: round(s, 1) for m, s in _took.items()})  # a partial run updates its modules
    DURATIONS.write_text(json.dumps(dict(sorted(known.items())), indent=0) + "\n")
