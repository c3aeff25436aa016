"""Reference statistics of a model's inputs, computed at build time, for drift detection.

For each numeric input the builder takes the golden (or calibration) arrays and reduces them
to a matrix ``[rows, features]``: rows along the first (batch) axis, one feature per element
of the rest of the tensor. Inputs with at most ``MAX_FEATURES`` features keep one statistic
per feature (``mode: "per_feature"``); wider inputs (images, token ids, audio) are
summarised by the mean over features of each row (``mode: "row_mean"``, a single feature),
which keeps the file and the device's sketches small and still shifts when the input
distribution's level shifts.

Per feature the file stores the interior bin edges of ``bins`` reference quantiles, the
reference proportion of values in each bin (for the population stability index), and a
sample of at most ``sample_size`` reference values (for the two-sample Kolmogorov-Smirnov
test). A value ``x`` falls into bin ``searchsorted(edges, x, side="right")``.

The file (``input_stats.json``, canonical JSON, listed in the manifest's ``files`` and
named by the optional manifest key ``input_stats``)::

    {"format": 1, "bins": 10, "inputs": {"X": {"mode": "per_feature", "features": 64,
     "rows": 32, "edges": [[...], ...], "proportions": [[...], ...],
     "sample": [[...], ...]}}}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BundleError
from .manifest import canonical_json, parse_canonical_json

INPUT_STATS_FILE = "input_stats.json"
STATS_FORMAT = 1
DEFAULT_BINS = 10
DEFAULT_SAMPLE = 200
MAX_FEATURES = 64
MAX_BINS = 100
MAX_SAMPLE = 1000
MAX_INPUTS = 256
MODES = ("per_feature", "row_mean")
_NUMERIC = ("f", "i", "u", "b")


class InputStatsError(BundleError):
    reason = "bad input statistics"


def feature_matrix(arr: Any, mode: str) -> np.ndarray:
    """``arr`` as float64 ``[rows, features]`` (``row_mean``: ``[rows, 1]``)."""
    a = np.asarray(arr)
    if a.dtype.kind not in _NUMERIC:
        raise InputStatsError(f"cannot summarise a {a.dtype} tensor")
    a = a.astype(np.float64, copy=False)
    m = a.reshape(1, -1) if a.ndim == 0 else a.reshape(a.shape[0], -1)
    if mode == "row_mean":
        return m.mean(axis=1, keepdims=True) if m.shape[1] else np.zeros((m.shape[0], 1))
    return m


def choose_mode(features: int, max_features: int = MAX_FEATURES) -> str:
    return "per_feature" if features <= max_features else "row_mean"


def bin_index(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The bin of each value (0 .. len(edges))."""
    return np.searchsorted(edges, values, side="right")


@dataclass(frozen=True)
class FeatureStats:
    edges: tuple[float, ...]
    proportions: tuple[float, ...]
    sample: tuple[float, ...]

    def __post_init__(self) -> None:
        vals = (*self.edges, *self.proportions, *self.sample)
        if not all(isinstance(v, float) and math.isfinite(v) for v in vals):
            raise InputStatsError("edges, proportions and sample must be finite numbers")
        if len(self.edges) > MAX_BINS - 1 or len(self.sample) > MAX_SAMPLE:
            raise InputStatsError("too many bins or sample values")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise InputStatsError("bin edges must be strictly increasing")
        if len(self.proportions) != len(self.edges) + 1:
            raise InputStatsError("there must be one proportion per bin (edges + 1)")
        if any(p < 0 for p in self.proportions) or abs(sum(self.proportions) - 1.0) > 1e-6:
            raise InputStatsError("proportions must be >= 0 and sum to 1")
        if not self.sample:
            raise InputStatsError("the reference sample must not be empty")


@dataclass(frozen=True)
class InputReference:
    """Reference statistics of one input."""

    mode: str
    rows: int
    features: tuple[FeatureStats, ...]

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputStatsError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.rows, int) or self.rows < 1:
            raise InputStatsError("rows must be a positive integer")
        if not self.features or len(self.features) > MAX_FEATURES:
            raise InputStatsError(f"an input has 1 to {MAX_FEATURES} features")
        if self.mode == "row_mean" and len(self.features) != 1:
            raise InputStatsError("a row_mean input has exactly one feature")


@dataclass(frozen=True)
class InputStats:
    """Reference statistics of every summarised input of a bundle."""

    bins: int
    inputs: Mapping[str, InputReference]

    def __post_init__(self) -> None:
        if not isinstance(self.bins, int) or not 2 <= self.bins <= MAX_BINS:
            raise InputStatsError(f"bins must be an integer in 2..{MAX_BINS}")
        if len(self.inputs) > MAX_INPUTS:
            raise InputStatsError(f"more than {MAX_INPUTS} inputs")
        object.__setattr__(self, "inputs", dict(self.inputs))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": STATS_FORMAT,
            "bins": self.bins,
            "inputs": {
                name: {
                    "mode": ref.mode,
                    "features": len(ref.features),
                    "rows": ref.rows,
                    "edges": [list(f.edges) for f in ref.features],
                    "proportions": [list(f.proportions) for f in ref.features],
                    "sample": [list(f.sample) for f in ref.features],
                }
                for name, ref in self.inputs.items()
            },
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> InputStats:
        """Strictly parse ``input_stats.json``; ``InputStatsError`` if malformed."""
        try:
            obj = parse_canonical_json(data, "input_stats")
        except BundleError as e:
            raise InputStatsError(e.detail) from None
        try:
            if obj.get("format") != STATS_FORMAT:
                raise InputStatsError(f"unsupported format {obj.get('format')!r}")
            inputs: dict[str, InputReference] = {}
            for name, d in obj["inputs"].items():
                n = d["features"]
                cols = [d["edges"], d["proportions"], d["sample"]]
                if not isinstance(n, int) or any(len(c) != n for c in cols):
                    raise InputStatsError(f"input {name!r}: edges/proportions/sample per feature")
                feats = tuple(
                    FeatureStats(tuple(map(float, e)), tuple(map(float, p)), tuple(map(float, s)))
                    for e, p, s in zip(*cols, strict=True)
                )
                inputs[str(name)] = InputReference(d["mode"], d["rows"], feats)
            return cls(bins=obj["bins"], inputs=inputs)
        except InputStatsError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise InputStatsError(f"malformed input statistics: {e!r}") from None


def _feature_stats(col: np.ndarray, bins: int, sample_idx: np.ndarray) -> FeatureStats:
    qs = np.quantile(col, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    edges = np.unique(np.round(qs, 9))
    counts = np.bincount(bin_index(edges, col), minlength=len(edges) + 1)
    props = counts / counts.sum()
    props = props / props.sum()
    return FeatureStats(
        tuple(float(e) for e in edges),
        tuple(float(p) for p in props),
        tuple(float(np.round(v, 9)) for v in col[sample_idx]),
    )


def compute_input_stats(
    specs: Sequence[Any],
    arrays: Mapping[str, np.ndarray],
    *,
    bins: int = DEFAULT_BINS,
    sample_size: int = DEFAULT_SAMPLE,
    max_features: int = MAX_FEATURES,
    seed: int = 0,
) -> InputStats:
    """Reference statistics of ``arrays`` (one per input spec; non-numeric inputs skipped)."""
    rng = np.random.default_rng(seed)
    out: dict[str, InputReference] = {}
    for spec in specs:
        if spec.name not in arrays:
            continue
        arr = np.asarray(arrays[spec.name])
        if arr.dtype.kind not in _NUMERIC:
            continue
        flat = feature_matrix(arr, "per_feature")
        mode = choose_mode(flat.shape[1], max_features)
        m = feature_matrix(arr, mode)
        rows = m.shape[0]
        if rows < 1 or m.shape[1] < 1 or not np.all(np.isfinite(m)):
            raise InputStatsError(f"input {spec.name!r}: need finite values in at least one row")
        k = min(rows, sample_size)
        idx = np.sort(rng.choice(rows, size=k, replace=False))
        feats = tuple(_feature_stats(m[:, j], bins, idx) for j in range(m.shape[1]))
        out[spec.name] = InputReference(mode, rows, feats)
    return InputStats(bins=bins, inputs=out)


__all__ = [
    "DEFAULT_BINS",
    "INPUT_STATS_FILE",
    "MAX_FEATURES",
    "FeatureStats",
    "InputReference",
    "InputStats",
    "InputStatsError",
    "bin_index",
    "choose_mode",
    "compute_input_stats",
    "feature_matrix",
]
