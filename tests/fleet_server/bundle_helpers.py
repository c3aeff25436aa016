"""Signed bundles for the upload tests, made with model_bundles' public writer."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from model_bundles import keys
from model_bundles.manifest import Manifest
from model_bundles.writer import write_bundle


def make_bundle(out: Path, model: Path, key: Ed25519PrivateKey, *, name: str = "sample",
                version: str = "1.0.0", extra: bytes = b"") -> Path:
    """A bundle of ``model`` (plus ``extra`` bytes, to vary the content) signed by ``key``."""
    data = model.read_bytes()
    files = [{"path": "model.onnx", "sha256": hashlib.sha256(data).hexdigest(),
              "size": len(data)}]
    sources: dict[str, Path | bytes] = {"model.onnx": model}
    if extra:
        files.append({"path": "notes.txt", "sha256": hashlib.sha256(extra).hexdigest(),
                      "size": len(extra)})
        sources["notes.txt"] = extra
    manifest = Manifest.from_dict({
        "format_version": 1, "name": name, "version": version,
        "created_at": "2026-11-29T02:50:00Z", "task": "classifier",
        "inputs": [{"name": "features", "dtype": "float32", "shape": ["batch", 16]}],
        "outputs": [{"name": "scores", "dtype": "float32", "shape": ["batch", 4]},
                    {"name": "label", "dtype": "int64", "shape": ["batch"]}],
        "files": files,
        "variants": [{"id": "onnx-fp32", "file": "model.onnx", "format": "onnx",
                      "precision": "fp32", "delegates": ["cpu"],
                      "tolerance": {"atol": 1e-4, "rtol": 1e-3}}],
        "golden": None, "latency_budget_ms": None,
        "publisher_key_id": keys.key_id(key.public_key()),
    })
    return write_bundle(out, manifest, key, sources)
