"""Delta fixtures: the sample model (v1), head-only fine-tunes of it, and the in-process
agent rig of tests/updater (sample@1.0.0 committed through a signed instruction)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from model_bundles.delta_build import build_delta
from model_bundles.samples import sample_model
from ota.delta import DeltaRef
from ota.instructions import BundleRef, Instruction, sign_instruction
from tests.updater.conftest import CHUNK, DEVICE, Rig, rig  # noqa: F401 - the rig fixture

HEAD = ("w2", "b2")
"""The classifier head of the sample model (hidden -> classes)."""


def fine_tune_head(model: onnx.ModelProto, seed: int) -> onnx.ModelProto:
    """The model with only its head's weights moved (a head-only fine-tune)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rng = np.random.default_rng(seed)
    for init in out.graph.initializer:
        if init.name in HEAD:
            w = numpy_helper.to_array(init)
            moved = (w + rng.standard_normal(w.shape) * 0.05).astype(w.dtype)
            init.CopyFrom(numpy_helper.from_array(moved, init.name))
    return out


@pytest.fixture(scope="session")
def head_tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two head-only fine-tunes of the sample model (seed 0), as ONNX files."""
    root = tmp_path_factory.mktemp("head")
    paths = []
    for seed in (1, 2):
        path = root / f"head-{seed}.onnx"
        onnx.save_model(fine_tune_head(sample_model(0), seed), str(path))
        paths.append(path)
    return paths[0], paths[1]


def delta_ref(data: bytes, base_sha256: str) -> DeltaRef:
    return DeltaRef(base_sha256=base_sha256, sha256=hashlib.sha256(data).hexdigest(),
                    size=len(data), chunk_size=CHUNK,
                    chunk_hashes=tuple(hashlib.sha256(data[i:i + CHUNK]).hexdigest()
                                       for i in range(0, len(data), CHUNK)))


def make_delta(r: Rig, base: Path, target: Path) -> tuple[Path, DeltaRef]:
    """The fleet-signed delta base -> target, written beside them."""
    built = build_delta(base, target, r.fleet_key)
    path = target.with_suffix(".efd")
    path.write_bytes(built.data)
    return path, delta_ref(built.data, hashlib.sha256(base.read_bytes()).hexdigest())


def instruct(r: Rig, bundle: BundleRef, delta: DeltaRef | None) -> bytes:
    r.seq += 1
    now = time.time()
    return sign_instruction(Instruction(
        device_id=DEVICE, seq=r.seq, issued_at=now - 60, expires_at=now + 3600,
        deployment_id="d-2", bundle=bundle, delta=delta), r.fleet_key)

