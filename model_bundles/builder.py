"""Build a signed bundle from one ONNX model and optional further artefacts of it.

Reference outputs come from ONNX Runtime's CPU provider running the first (ONNX) model on
the golden inputs (given with ``golden=`` or generated from the input specs with seed 0).
Further artefacts (``.onnx``, ``.tflite``, ``.mlpackage``; ``variant_formats``) become
variants when they share the first model's signature, and each is run on its own runtime
and held to its tolerance before the bundle is written (Core ML only on macOS).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .dynamic_dims import dim_key, dim_keys, refuse_empty_inputs, resolve_dim_settings
from .errors import BuildError, GoldenError, ManifestError
from .golden import compare_outputs, generate_inputs, golden_bytes, golden_count
from .input_stats import INPUT_STATS_FILE, InputStatsError, compute_input_stats
from .keys import key_id as compute_key_id
from .keys import load_private_key
from .limits import DEFAULT_LIMITS, BundleLimits
from .manifest import (
    TASKS,
    FileEntry,
    Golden,
    Manifest,
    TensorSpec,
    Tolerance,
    Variant,
    validate_name,
    validate_version,
)
from .variant_formats import Artefact, can_run, check_signature, read_artefact, run_artefact
from .writer import write_bundle

GOLDEN_FILE = "golden.npz"
DEFAULT_DELEGATES = ("cpu",)
FORMAT_DELEGATES = {"tflite": ("litert", "litert-ref"), "mlpackage": ("coreml-native",)}
_SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "mlpackage": ".mlpackage"}
DEFAULT_TOLERANCES = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3),
    "fp16": Tolerance(atol=1e-2, rtol=1e-2),
    "int8": Tolerance(atol=5e-2, rtol=5e-2),
}


# --------------------------------------------------------------------------- helpers


def _fix_hint(specs: Sequence[TensorSpec]) -> str:
    names = dim_keys(specs)
    dims = " ".join(f"--dim {n}=N" for n in names[:3])
    parts = []
    if dims:
        parts.append(f"set the dynamic dimensions ({dims})")
    parts.append(
        "or pass --golden inputs.npz with one array per input name ("
        + ", ".join(repr(s.name) for s in specs)
        + ")"
    )
    return "fix: " + " ".join(parts)


def _shape_text(shape: Sequence[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _cast_input(arr: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Cast a user-supplied golden array to the spec dtype when no value changes."""
    dst = np.dtype(spec.dtype)
    src = arr.dtype
    if src == dst:
        return arr
    problem = None
    if np.can_cast(src, dst, casting="safe"):
        return arr.astype(dst)
    if src.kind == "f" and dst.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            cast = arr.astype(dst)
        if np.array_equal(np.isfinite(cast), np.isfinite(arr)):
            return cast
        problem = "values overflow"
    elif src.kind in "biu" and dst.kind in "iuf":
        with np.errstate(over="ignore", invalid="ignore"):
            cast = arr.astype(dst)
        if np.array_equal(cast.astype(src), arr):
            return cast
        problem = "values do not fit"
    else:
        problem = "no safe cast"
    raise BuildError(
        f"golden input {spec.name!r} has dtype {src}, the model expects {spec.describe()} "
        f"({problem}); fix: save that array as {dst} in the --golden npz"
    )


def _load_golden_inputs(
    path: Path, specs: Sequence[TensorSpec], dims: Mapping[str, int]
) -> dict[str, np.ndarray]:
    hint = _fix_hint(specs)
    try:
        data = np.load(str(path), allow_pickle=False)
    except FileNotFoundError:
        raise BuildError(f"--golden file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise BuildError(f"--golden {path} is not a readable npz ({exc}); {hint}") from None
    if isinstance(data, np.ndarray):
        raise BuildError(
            f"--golden {path} holds a single array; save an npz with one array per input: "
            f"np.savez(path, **{{{specs[0].name!r}: x}})"
        )
    with data:
        names = [s.name for s in specs]
        extra = [k for k in data.files if k not in names]
        missing = [n for n in names if n not in data.files]
        if missing:
            raise BuildError(
                f"--golden {path.name} has no array for input {missing[0]!r} "
                f"(expects {specs[names.index(missing[0])].describe()}); {hint}"
            )
        if extra:
            raise BuildError(
                f"--golden {path.name} has array {extra[0]!r}, which is not a model input "
                f"(inputs: {', '.join(map(repr, names))})"
            )
        try:
            arrays = {s.name: np.asarray(data[s.name]) for s in specs}
        except ValueError as exc:
            raise BuildError(f"--golden {path.name}: cannot load arrays ({exc})") from None
    symbolic: dict[str, tuple[int, str]] = {}
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        arr = arrays[spec.name]
        want = spec.describe()
        if arr.ndim != len(spec.shape):
            raise BuildError(
                f"golden input {spec.name!r} has shape {tuple(arr.shape)} (rank {arr.ndim}) but "
                f"the model expects {want} (rank {len(spec.shape)}); fix: give --golden an array "
                f"of shape {_shape_text(spec.shape)} for {spec.name!r}"
            )
        for axis, dim in enumerate(spec.shape):
            got = int(arr.shape[axis])
            if isinstance(dim, int) and got != dim:
                raise BuildError(
                    f"golden input {spec.name!r} has shape {tuple(arr.shape)} but the model "
                    f"expects {want} (axis {axis} must be {dim}); fix: give --golden an array of "
                    f"shape {_shape_text(spec.shape)} for {spec.name!r}"
                )
            key = dim_key(spec, axis)
            if key is None:
                continue
            if key in dims and dims[key] != got:
                raise BuildError(
                    f"golden input {spec.name!r} has {key}={got} on axis {axis} but --dim "
                    f"{key}={dims[key]}; fix: drop --dim or reshape the --golden array"
                )
            if key in symbolic and symbolic[key][0] != got:
                other = symbolic[key][1]
                raise BuildError(
                    f"golden inputs {other!r} and {spec.name!r} disagree on dimension "
                    f"{key!r} ({symbolic[key][0]} vs {got}); fix: make them the same size"
                )
            symbolic.setdefault(key, (got, spec.name))
        out[spec.name] = np.array(_cast_input(arr, spec), order="C", copy=None)
    return out


def _dims_used(specs: Sequence[TensorSpec], arrays: Mapping[str, np.ndarray]) -> dict[str, int]:
    used: dict[str, int] = {}
    for spec in specs:
        arr = arrays[spec.name]
        for axis in range(len(spec.shape)):
            key = dim_key(spec, axis)
            if key is not None:
                used.setdefault(key, int(arr.shape[axis]))
    return used


def _describe_feeds(specs: Sequence[TensorSpec], arrays: Mapping[str, np.ndarray]) -> str:
    return "; ".join(
        f"input {s.name!r} expects {s.describe()}, got {arrays[s.name].dtype} {tuple(arrays[s.name].shape)}"
        for s in specs
    )


def run_reference(
    model_path: Path,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    arrays: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Run the model with ONNX Runtime's CPU provider; BuildError naming the inputs and the
    fix when it fails."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BuildError(f"ONNX Runtime cannot load {Path(model_path).name}: {first}") from None
    names = [s.name for s in outputs]
    try:
        results = session.run(names, {s.name: arrays[s.name] for s in inputs})
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BuildError(
            f"{Path(model_path).name} failed on the golden inputs ({_describe_feeds(inputs, arrays)}): "
            f"{first}; {_fix_hint(inputs)}"
        ) from None
    out: dict[str, np.ndarray] = {}
    for spec, value in zip(outputs, results, strict=True):
        arr = np.asarray(value)
        if arr.dtype != np.dtype(spec.dtype):
            raise BuildError(
                f"{Path(model_path).name}: output {spec.name!r} came out as {arr.dtype}, the model "
                f"declares {spec.describe()}"
            )
        if arr.ndim != len(spec.shape) or any(
            isinstance(d, int) and arr.shape[i] != d for i, d in enumerate(spec.shape)
        ):
            raise BuildError(
                f"{Path(model_path).name}: output {spec.name!r} came out with shape "
                f"{tuple(arr.shape)}, the model declares {spec.describe()}"
            )
        out[spec.name] = np.array(arr, order="C", copy=None)
    return out


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while True:
            data = fh.read(1 << 20)
            if not data:
                break
            digest.update(data)
            size += len(data)
    return digest.hexdigest(), size


def _gate_variant(
    art: Artefact, variant_id: str, tol: Tolerance, inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec], arrays: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
) -> None:
    """Run a further variant on its own runtime and hold it to its tolerance against the
    reference outputs; BuildError naming the variant and the measured error if it fails.
    Core ML packages are not run off macOS (structural checks only)."""
    ok, _why = can_run(art)
    if not ok:
        return
    actual = run_artefact(art, inputs, outputs, arrays)
    result = compare_outputs(actual, reference, tol)
    if not result.passed:
        raise BuildError(
            f"variant {variant_id} ({art.path.name}) fails its golden check: max abs error "
            f"{result.max_abs_error:.3g} (tolerance atol={tol.atol:g} rtol={tol.rtol:g}; "
            f"{result.detail}); fix the artefact or pass a looser tolerance for {variant_id}")


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- build


def build_bundle(
    models: Sequence[Path],
    *,
    name: str,
    version: str,
    key_path: Path,
    out: Path,
    golden: Path | None = None,
    dims: Mapping[str, int] | None = None,
    task: str | None = None,
    tolerance: Tolerance | None = None,
    delegates: Sequence[str] | None = None,
    created_at: str | None = None,
    latency_budget_ms: float | None = None,
    limits: BundleLimits = DEFAULT_LIMITS,
    calibration: Path | None = None,
    variant_tolerances: Mapping[str, Tolerance] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Manifest:
    """Build, sign and write ``out`` (atomically); return the manifest.

    The first model (ONNX) defines the signature (inputs/outputs); further artefacts
    (``.onnx``, ``.tflite``, ``.mlpackage``) must match it and each becomes a variant
    (``<format>-<precision>``) that must reproduce the golden outputs on its own runtime
    within its tolerance (``variant_tolerances`` by variant id, else ``tolerance``, else
    the precision's default). Golden inputs come from ``golden`` (an npz with one array per
    input name) or are generated with seed 0 using ``dims`` for the dynamic dimensions;
    golden outputs are the first model's results on ONNX Runtime CPU. ``on_step`` is told
    the name of each long step as it starts (the CLI's progress display).
    """
    step = on_step or (lambda _text: None)
    models = [Path(m) for m in models]
    if not models:
        raise BuildError("no model given")
    try:
        validate_name(name)
        validate_version(version)
    except ManifestError as exc:
        raise BuildError(exc.detail) from None
    task = task or "generic"
    if task not in TASKS:
        raise BuildError(f"bad task {task!r} (want one of {', '.join(TASKS)})")
    key = load_private_key(Path(key_path))
    publisher = compute_key_id(key.public_key())

    step(f"reading {len(models)} model file{'s' if len(models) > 1 else ''}")
    arts = [read_artefact(path) for path in models]
    if arts[0].format != "onnx":
        raise BuildError(
            f"{models[0].name}: the first model must be ONNX (it is the reference that golden "
            "outputs come from); list the .tflite/.mlpackage artefacts after it")
    inputs, outputs = list(arts[0].inputs or ()), list(arts[0].outputs or ())
    for art in arts[1:]:
        check_signature(art, inputs, outputs, models[0].name)

    refuse_empty_inputs(inputs, models[0].name)
    dims = resolve_dim_settings(dict(dims or {}), inputs)
    if golden is not None:
        arrays = _load_golden_inputs(Path(golden), inputs, dims)
    else:
        arrays = generate_inputs(inputs, dims, seed=0)
    step("running the reference model for the golden outputs")
    reference = run_reference(models[0], inputs, outputs, arrays)

    try:
        golden_data = golden_bytes(inputs, outputs, arrays, reference)
    except GoldenError as exc:
        raise BuildError(exc.detail) from None

    files: list[FileEntry] = []
    variants: list[Variant] = []
    sources: dict[str, Path | bytes] = {}
    per_variant = dict(variant_tolerances or {})
    for index, art in enumerate(arts):
        base_id = f"{art.format}-{art.precision}"
        variant_id = base_id
        n = 2
        while any(v.id == variant_id for v in variants):
            variant_id = f"{base_id}-{n}"
            n += 1
        tol = per_variant.pop(variant_id, None) or tolerance or DEFAULT_TOLERANCES.get(
            art.precision, DEFAULT_TOLERANCES["fp32"])
        if index > 0:
            step(f"checking variant {variant_id} against the golden outputs")
            _gate_variant(art, variant_id, tol, inputs, outputs, arrays, reference)
        file_name = "model.onnx" if index == 0 else f"model-{variant_id}{_SUFFIX[art.format]}"
        step(f"hashing {file_name}")
        for rel, src in art.files:
            entry_path = f"{file_name}/{rel}" if rel else file_name
            sha, size = _sha256_file(src)
            files.append(FileEntry(path=entry_path, sha256=sha, size=size))
            sources[entry_path] = src
        fmt_delegates = tuple(delegates or DEFAULT_DELEGATES) if art.format == "onnx" else (
            FORMAT_DELEGATES[art.format])
        variants.append(
            Variant(
                id=variant_id,
                file=file_name,
                format=art.format,
                precision=art.precision,
                delegates=fmt_delegates,
                tolerance=tol,
            )
        )
    if per_variant:
        raise BuildError(
            f"tolerance given for variant {sorted(per_variant)[0]!r}, which this build does not "
            f"make (variants: {', '.join(v.id for v in variants)})")
    files.append(
        FileEntry(
            path=GOLDEN_FILE, sha256=hashlib.sha256(golden_data).hexdigest(), size=len(golden_data)
        )
    )
    sources[GOLDEN_FILE] = golden_data
    stats_file = _add_input_stats(inputs, dims, golden, calibration, arrays, files, sources)

    try:
        manifest = Manifest(
            name=name,
            version=version,
            created_at=created_at or _utc_now(),
            task=task,
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            files=tuple(files),
            variants=tuple(variants),
            golden=Golden(
                file=GOLDEN_FILE,
                count=golden_count(inputs, arrays),
                dims=_dims_used(inputs, arrays),
            ),
            latency_budget_ms=latency_budget_ms,
            publisher_key_id=publisher,
            input_stats=stats_file,
        )
    except ManifestError as exc:
        raise BuildError(exc.detail) from None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    step(f"writing and signing {out.name}")
    write_bundle(out, manifest, key, sources, limits)
    return manifest


def _add_input_stats(
    inputs: Sequence[TensorSpec], dims: Mapping[str, int], golden: Path | None,
    calibration: Path | None, golden_arrays: Mapping[str, np.ndarray],
    files: list[FileEntry], sources: dict[str, Path | bytes],
) -> str | None:
    """Reference input statistics (for drift) from real data only: ``calibration`` if
    given, else a user-supplied ``golden``; generated golden inputs yield none."""
    if calibration is not None:
        arrays = _load_golden_inputs(Path(calibration), inputs, {})
    elif golden is not None:
        arrays = dict(golden_arrays)
    else:
        return None
    try:
        data = compute_input_stats(inputs, arrays).to_bytes()
    except InputStatsError as exc:
        raise BuildError(exc.detail) from None
    files.append(FileEntry(path=INPUT_STATS_FILE, sha256=hashlib.sha256(data).hexdigest(),
                           size=len(data)))
    sources[INPUT_STATS_FILE] = data
    return INPUT_STATS_FILE


__all__ = [
    "DEFAULT_DELEGATES",
    "FORMAT_DELEGATES",
    "DEFAULT_TOLERANCES",
    "GOLDEN_FILE",
    "build_bundle",
    "run_reference",
]
