"""Fixtures for the agent tests: model slots laid out as the installer leaves them."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from model_bundles.manifest import Manifest


def _entry(path: Path, rel: str) -> dict[str, object]:
    data = path.read_bytes()
    return {"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def write_slot(
    slot_dir: Path, model: Path, *, name: str = "sample", version: str = "1.0.0",
    corrupt_golden: bool = False,
) -> Manifest:
    """Lay out ``slot_dir`` as ``manifest.json`` + ``files/`` with golden vectors from ORT."""
    files = slot_dir / "files"
    files.mkdir(parents=True)
    shutil.copy(model, files / "model.onnx")
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal((2, inp.shape[1])).astype(np.float32)
    outs = sess.run(None, {inp.name: x})
    if corrupt_golden:
        outs = [o + 1 for o in outs]
    arrays = {"in_0": x, **{f"out_{j}": o for j, o in enumerate(outs)}}
    np.savez(files / "golden.npz", **arrays)
    out_specs = []
    for o, arr in zip(sess.get_outputs(), outs, strict=True):
        shape = ["N"] + [int(d) for d in arr.shape[1:]]
        out_specs.append({"name": o.name, "dtype": str(arr.dtype), "shape": shape})
    manifest = Manifest.from_dict({
        "format_version": 1, "name": name, "version": version,
        "created_at": "2026-11-29T02:50:00Z", "task": "classifier",
        "inputs": [{"name": inp.name, "dtype": "float32", "shape": ["N", int(inp.shape[1])]}],
        "outputs": out_specs,
        "files": [_entry(files / "model.onnx", "model.onnx"),
                  _entry(files / "golden.npz", "golden.npz")],
        "variants": [{"id": "onnx-fp32", "file": "model.onnx", "format": "onnx",
                      "precision": "fp32", "delegates": ["cpu"],
                      "tolerance": {"atol": 1e-4, "rtol": 1e-3}}],
        "golden": {"file": "golden.npz", "count": 2, "dims": {"N": 2}},
        "latency_budget_ms": None,
        "publisher_key_id": "0" * 64,
    })
    (slot_dir / "manifest.json").write_bytes(manifest.to_bytes())
    return manifest


@pytest.fixture
def make_slot(tmp_path: Path) -> Callable[..., Path]:
    def make(model: Path, name: str = "slot", **kw: object) -> Path:
        slot = tmp_path / name
        write_slot(slot, model, **kw)  # type: ignore[arg-type]
        return slot

    return make
