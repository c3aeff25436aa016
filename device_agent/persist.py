"""Atomic persistence: temp file in the same folder, fsync, os.replace, fsync the folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from model_bundles.atomic import atomic_write_bytes, fsync_dir

__all__ = ["atomic_write_bytes", "atomic_write_json", "fsync_dir", "read_json"]


def atomic_write_json(path: Path, value: Any, mode: int = 0o644) -> None:
    data = json.dumps(value, sort_keys=True, indent=2).encode() + b"\n"
    atomic_write_bytes(path, data, mode)


def read_json(path: Path) -> Any:
    """Read a JSON file; ``FileNotFoundError`` passes through, bad JSON is ``ValueError``."""
    raw = Path(path).read_bytes()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e
