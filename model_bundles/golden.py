"""Golden vectors: generation, the npz file (``in_<i>`` / ``out_<j>``) and comparison.

Pure numpy; no runtime. The agent's golden gate calls :func:`read_golden` and
:func:`compare_outputs`; the builder calls :func:`generate_inputs` and
:func:`write_golden`.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np

from .dynamic_dims import dim_key, null_dim_key
from .errors import GoldenError
from .manifest import Manifest, TensorSpec, Tolerance

#: bound on the total uncompressed size of a golden npz we agree to load
MAX_GOLDEN_BYTES = 512 * 1024 * 1024
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class GoldenSet:
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class GoldenComparison:
    passed: bool
    max_abs_error: float
    worst_output: str | None
    detail: str


def resolve_shape(spec: TensorSpec, dims: Mapping[str, int]) -> tuple[int, ...]:
    """Concrete shape for ``spec``: ints kept, symbolic ``d`` -> ``dims.get(d, 1)``,
    ``None`` at axis ``k`` -> ``dims.get("<name>:<k>", 1)``."""
    shape: list[int] = []
    for axis, dim in enumerate(spec.shape):
        key = dim_key(spec, axis)
        # key is None exactly when dim is fixed (an int)
        shape.append(int(dims.get(key, 1)) if key is not None else cast(int, dim))
    return tuple(shape)


def generate_inputs(
    inputs: Sequence[TensorSpec], dims: Mapping[str, int] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Deterministic inputs for ``inputs``: floats standard normal, integers in [0, 10),
    bools uniform. Symbolic/unnamed dimensions take ``dims`` (default 1)."""
    dims = dict(dims or {})
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in inputs:
        shape = resolve_shape(spec, dims)
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            arr = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            arr = rng.integers(0, 10, size=shape).astype(dtype)
        elif dtype.kind == "b":
            arr = rng.random(shape) < 0.5
        else:  # pragma: no cover - manifest dtypes are limited
            raise GoldenError(f"cannot generate dtype {spec.dtype}")
        out[spec.name] = np.array(arr, order="C", copy=None)
    return out


def golden_count(inputs: Sequence[TensorSpec], arrays: Mapping[str, np.ndarray]) -> int:
    """Rows along the leading axis of the first input (1 for a scalar)."""
    first = np.asarray(arrays[inputs[0].name])
    return int(first.shape[0]) if first.ndim >= 1 else 1


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Deterministic, uncompressed npz (fixed timestamps, sorted entry order)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            member = io.BytesIO()
            np.lib.format.write_array(member, np.array(arrays[key], order="C", copy=None), allow_pickle=False)
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def _check_arrays(specs: Sequence[TensorSpec], arrays: Mapping[str, np.ndarray], what: str) -> None:
    for spec in specs:
        if spec.name not in arrays:
            raise GoldenError(f"no {what} array for {spec.name!r}")
        arr = np.asarray(arrays[spec.name])
        if arr.dtype != np.dtype(spec.dtype):
            raise GoldenError(f"{what} {spec.name!r} has dtype {arr.dtype}, spec says {spec.dtype}")
        if arr.ndim != len(spec.shape):
            raise GoldenError(
                f"{what} {spec.name!r} has rank {arr.ndim}, spec says {spec.describe()}"
            )
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int) and arr.shape[axis] != dim:
                raise GoldenError(
                    f"{what} {spec.name!r} has shape {arr.shape}, spec says {spec.describe()}"
                )


def golden_bytes(
    inputs_spec: Sequence[TensorSpec],
    outputs_spec: Sequence[TensorSpec],
    inputs: Mapping[str, np.ndarray],
    outputs: Mapping[str, np.ndarray],
) -> bytes:
    """The golden npz as bytes (checked against the specs)."""
    _check_arrays(inputs_spec, inputs, "input")
    _check_arrays(outputs_spec, outputs, "output")
    arrays: dict[str, np.ndarray] = {}
    for i, spec in enumerate(inputs_spec):
        arrays[f"in_{i}"] = np.asarray(inputs[spec.name])
    for j, spec in enumerate(outputs_spec):
        arrays[f"out_{j}"] = np.asarray(outputs[spec.name])
    return _npz_bytes(arrays)


def write_golden(
    path: Path,
    inputs_spec: Sequence[TensorSpec],
    outputs_spec: Sequence[TensorSpec],
    inputs: Mapping[str, np.ndarray],
    outputs: Mapping[str, np.ndarray],
) -> Path:
    """Write ``in_<i>`` / ``out_<j>`` arrays (indices into the specs) to ``path``."""
    path = Path(path)
    path.write_bytes(golden_bytes(inputs_spec, outputs_spec, inputs, outputs))
    return path


def read_golden(path_or_bytes: Path | str | bytes | BinaryIO, manifest: Manifest) -> GoldenSet:
    """Load a golden npz (``allow_pickle=False``) and check it against the manifest specs:
    exactly ``in_0..in_{n-1}`` and ``out_0..out_{m-1}``, dtypes, ranks, fixed dims."""
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        source: Any = io.BytesIO(bytes(path_or_bytes))
    elif isinstance(path_or_bytes, str | Path):
        source = str(path_or_bytes)
    else:
        source = path_or_bytes
    try:
        npz = np.load(source, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise GoldenError(f"cannot load golden npz ({exc})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise GoldenError("golden file is not an npz archive")
    with npz:
        zip_file = npz.zip
        if zip_file is None:  # an NpzFile from np.load always holds its zip
            raise GoldenError("golden file is not an npz archive")
        total = sum(info.file_size for info in zip_file.infolist())
        if total > MAX_GOLDEN_BYTES:
            raise GoldenError(f"golden arrays total {total} bytes (limit {MAX_GOLDEN_BYTES})")
        expected = [f"in_{i}" for i in range(len(manifest.inputs))] + [
            f"out_{j}" for j in range(len(manifest.outputs))
        ]
        if sorted(npz.files) != sorted(expected):
            extra = sorted(set(npz.files) - set(expected))
            missing = [k for k in expected if k not in npz.files]
            raise GoldenError(
                f"golden npz has unexpected array {extra[0]!r}"
                if extra
                else f"golden npz lacks array {missing[0]!r}"
            )
        try:
            inputs = {s.name: npz[f"in_{i}"] for i, s in enumerate(manifest.inputs)}
            outputs = {s.name: npz[f"out_{j}"] for j, s in enumerate(manifest.outputs)}
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise GoldenError(f"cannot read golden arrays ({exc})") from None
    _check_arrays(manifest.inputs, inputs, "input")
    _check_arrays(manifest.outputs, outputs, "output")
    if manifest.golden is not None:
        count = golden_count(manifest.inputs, inputs)
        if count != manifest.golden.count:
            raise GoldenError(f"golden has {count} rows, manifest says {manifest.golden.count}")
    return GoldenSet(inputs=inputs, outputs=outputs)


def compare_outputs(
    actual: Mapping[str, Any], expected: Mapping[str, Any], tolerance: Tolerance
) -> GoldenComparison:
    """Compare ``actual`` with ``expected`` output by output.

    Floats: ``|a - e| <= atol + rtol * |e|`` elementwise (NaN only matches NaN). Integers
    and bools: exact. A missing output or a shape mismatch fails. ``max_abs_error`` is the
    largest absolute difference seen; ``worst_output`` the output that failed first, or
    the one with the largest error when all passed."""
    max_abs = 0.0
    worst: str | None = None
    worst_err = -1.0
    failures: list[str] = []
    first_failed: str | None = None
    for name, exp_value in expected.items():
        exp = np.asarray(exp_value)
        if name not in actual:
            failures.append(f"{name}: missing")
            first_failed = first_failed or name
            continue
        act = np.asarray(actual[name])
        if act.shape != exp.shape:
            failures.append(f"{name}: shape {act.shape} != expected {exp.shape}")
            first_failed = first_failed or name
            continue
        if exp.size == 0:
            if worst_err < 0:
                worst, worst_err = name, 0.0
            continue
        exact = exp.dtype.kind in "biu"
        if act.dtype.kind not in "biuf" or exp.dtype.kind not in "biuf":
            failures.append(f"{name}: unsupported dtype {act.dtype}/{exp.dtype}")
            first_failed = first_failed or name
            continue
        a64 = act.astype(np.float64)
        e64 = exp.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(a64 - e64)
        nan_a, nan_e = np.isnan(a64), np.isnan(e64)
        both_nan = nan_a & nan_e
        diff = np.where(both_nan, 0.0, diff)
        diff = np.where(nan_a ^ nan_e, np.inf, diff)
        err = float(np.max(diff)) if diff.size else 0.0
        if exact:
            ok_mask = (a64 == e64) | both_nan
        else:
            with np.errstate(invalid="ignore", over="ignore"):
                limit = tolerance.atol + tolerance.rtol * np.abs(e64)
                ok_mask = (diff <= limit) | both_nan
        max_abs = max(max_abs, err)
        if not bool(np.all(ok_mask)):
            bad = int(np.size(ok_mask) - np.count_nonzero(ok_mask))
            kind = (
                "exact match required"
                if exact
                else (f"atol={tolerance.atol:g} rtol={tolerance.rtol:g}")
            )
            failures.append(f"{name}: {bad} of {exp.size} elements off (max abs {err:.3g}, {kind})")
            first_failed = first_failed or name
        if err > worst_err:
            worst, worst_err = name, err
    if failures:
        return GoldenComparison(
            passed=False,
            max_abs_error=max_abs,
            worst_output=first_failed,
            detail="; ".join(failures),
        )
    return GoldenComparison(
        passed=True,
        max_abs_error=max_abs,
        worst_output=worst,
        detail=f"{len(expected)} outputs within tolerance (max abs error {max_abs:.3g})",
    )


__all__ = [
    "MAX_GOLDEN_BYTES",
    "GoldenComparison",
    "GoldenSet",
    "compare_outputs",
    "generate_inputs",
    "golden_bytes",
    "golden_count",
    "null_dim_key",
    "read_golden",
    "resolve_shape",
    "write_golden",
]
