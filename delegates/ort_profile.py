"""Proof of execution for ONNX Runtime: which provider ran how many graph nodes.

``InferenceSession.get_providers()`` lists the providers a session *registered*, not where
the nodes went. A session created with ``enable_profiling`` writes, for one run, a Chrome
trace whose ``Node`` events carry ``args.provider``; counting distinct node names per
provider gives the real placement. ``OrtBackend`` profiles one warm-up run with generated
inputs, reads the counts here and deletes the profile file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["count_nodes", "node_counts_from_profile", "warmup_feeds"]

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def count_nodes(events: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Distinct graph nodes per provider in ORT profile ``events`` (pure)."""
    seen: dict[str, set[str]] = {}
    for ev in events:
        if not isinstance(ev, Mapping) or ev.get("cat") != "Node":
            continue
        args = ev.get("args")
        if not isinstance(args, Mapping) or not isinstance(args.get("provider"), str):
            continue
        name = str(ev.get("name", ""))
        for suffix in ("_kernel_time", "_fence_before", "_fence_after"):
            name = name.removesuffix(suffix)
        seen.setdefault(args["provider"], set()).add(name)
    return {provider: len(nodes) for provider, nodes in sorted(seen.items())}


def node_counts_from_profile(path: Path) -> dict[str, int]:
    """Read a profile JSON file and count nodes per provider (``{}`` if unreadable)."""
    try:
        events = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if isinstance(events, dict):  # some builds wrap the list
        events = events.get("traceEvents", [])
    return count_nodes(events if isinstance(events, list) else [])


def warmup_feeds(inputs: Iterable[Any]) -> dict[str, np.ndarray] | None:
    """Zero-valued feeds from ``sess.get_inputs()`` (dynamic dims -> 1), or ``None`` when
    an input type cannot be made up (strings, sequences, maps)."""
    feeds: dict[str, np.ndarray] = {}
    for arg in inputs:
        dtype = _ORT_DTYPES.get(str(arg.type))
        if dtype is None:
            return None
        shape = tuple(d if isinstance(d, int) and d >= 0 else 1 for d in (arg.shape or []))
        feeds[arg.name] = np.zeros(shape, dtype=dtype)
    return feeds
