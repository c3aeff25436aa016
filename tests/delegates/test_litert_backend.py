"""A real .tflite model through LiteRT: XNNPACK on vs off, external delegates refused clearly."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from delegates.base import DelegateError, DelegateUnavailableError
from delegates.litert_backend import LiteRtBackend

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TFLITE = FIXTURES / "tiny_classifier.tflite"
sys.path.insert(0, str(FIXTURES))
from make_tiny_tflite import build, reference  # noqa: E402

pytest.importorskip("ai_edge_litert.interpreter")


def test_committed_fixture_matches_its_generator_script() -> None:
    assert TFLITE.read_bytes() == build()


@pytest.mark.parametrize("xnnpack", [True, False])
def test_tflite_model_runs_with_and_without_xnnpack_and_matches_numpy(xnnpack: bool) -> None:
    session = LiteRtBackend("litert" if xnnpack else "litert-ref", xnnpack=xnnpack).open(TFLITE, {})
    x = np.random.default_rng(3).standard_normal((1, 16)).astype(np.float32)
    out = session.run({"features": x})
    np.testing.assert_allclose(out["scores"], reference(x), atol=1e-5)
    assert session.fallback is False
    if xnnpack:
        assert session.delegate == "litert:xnnpack" and session.node_counts["xnnpack"] >= 1
    else:
        assert session.delegate == "litert:builtin" and "xnnpack" not in session.node_counts
    session.close()


def test_external_delegate_library_that_is_absent_is_unavailable_with_its_path(
    tmp_path: Path,
) -> None:
    backend = LiteRtBackend("edgetpu", library=str(tmp_path / "libedgetpu.so.1"))
    probe = backend.probe()
    assert not probe.available and "libedgetpu.so.1 not found" in probe.reason
    with pytest.raises(DelegateUnavailableError, match="not found"):
        backend.open(TFLITE, {})


def test_a_library_that_is_not_a_delegate_is_refused_by_name(tmp_path: Path) -> None:
    fake = tmp_path / "libnotadelegate.so"
    fake.write_bytes(b"\x7fELF not really a shared object")
    with pytest.raises(DelegateError, match="is not a loadable TFLite delegate"):
        LiteRtBackend("gpu", library=str(fake)).open(TFLITE, {})
