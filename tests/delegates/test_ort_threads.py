"""The agent's ONNX Runtime sessions do not spin idle threads (docs/local-api.md, "ONNX
Runtime threads"); the CPU figures are measured by ``python -m bench.serving``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from delegates.onnxruntime_backend import OrtBackend


@pytest.mark.parametrize("threads", [0, 2])
def test_sessions_sleep_their_pool_threads_instead_of_spinning(
    sample_onnx: Path, threads: int,
) -> None:
    session = OrtBackend().open(sample_onnx, {"intra_op_threads": threads})
    opts = session._sess.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert (opts.inter_op_num_threads, opts.intra_op_num_threads) == (1, threads)
    out = session.run({"features": np.ones((2, 16), np.float32)})
    assert out["scores"].shape == (2, 4)
    session.close()
