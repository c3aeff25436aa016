"""The agent's one doorway to ``model_bundles``: manifests, slot files, golden vectors.

Kept in one small module so the slot layout (``manifest.json`` beside the extracted files)
and the calls into ``model_bundles`` are spelled once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model_bundles import golden as _golden
from model_bundles import manifest as _manifest
from model_bundles import verify as _verify

__all__ = ["MANIFEST_NAME", "compare", "files_dir", "parse_manifest", "read_golden", "read_manifest", "slot_file",
           "verify_slot"]

MANIFEST_NAME = "manifest.json"


def parse_manifest(data: bytes) -> Any:
    return _manifest.Manifest.from_bytes(data)


def read_manifest(slot_dir: Path) -> Any:
    return parse_manifest((Path(slot_dir) / MANIFEST_NAME).read_bytes())


def files_dir(slot_dir: Path) -> Path:
    """Slot layout: ``<slot>/manifest.json`` (the signed bytes) and ``<slot>/files/...``."""
    return Path(slot_dir) / "files"


def slot_file(slot_dir: Path, rel: str) -> Path:
    """Where the manifest file ``rel`` lives inside an extracted slot."""
    return files_dir(slot_dir) / rel


def verify_slot(slot_dir: Path, manifest: Any) -> None:
    _verify.verify_extracted(files_dir(slot_dir), manifest)


def read_golden(
    slot_dir: Path, manifest: Any
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    gs = _golden.read_golden(slot_file(slot_dir, manifest.golden.file), manifest)
    return dict(gs.inputs), dict(gs.outputs)


def compare(
    actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], tolerance: Any
) -> tuple[bool, float, str]:
    c = _golden.compare_outputs(actual, expected, tolerance)
    return bool(c.passed), float(c.max_abs_error), str(c.detail)
