"""Read the artefacts of one model in each supported format: ONNX, TFLite, Core ML package.

``read_artefact(path)`` returns an ``Artefact``: its format, precision, input/output specs
(``None`` when they cannot be read here) and the files to pack. The builder checks every
artefact against the first (ONNX) model with ``check_signature`` and runs each on its own
runtime (``run_artefact``) to gate it against the golden outputs.

- ``.onnx``: ``onnx`` for the specs, ONNX Runtime CPU to run.
- ``.tflite``: the LiteRT interpreter (``ai-edge-litert``, else ``tflite_runtime``) for the
  specs and the run; without it the build stops with what to install. Tensors are matched
  to the reference by position (TFLite names such as ``serving_default_x:0`` differ).
- ``.mlpackage`` (a directory): structural checks always (``Manifest.json`` parses, its
  ``rootModelIdentifier`` names an item whose file exists under ``Data/``); with
  ``coremltools`` installed the root spec is parsed and its input/output names and types
  are checked too. Prediction needs macOS, so elsewhere the build does not run it.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .dynamic_dims import declared_dim
from .errors import BuildError, ManifestError
from .manifest import TensorSpec

FORMATS = ("onnx", "tflite", "mlpackage")
_SUFFIXES = {".onnx": "onnx", ".tflite": "tflite", ".mlpackage": "mlpackage"}
MAX_PACKAGE_FILES = 256

# Core ML ArrayFeatureType.ArrayDataType values (Model.proto)
_COREML_DTYPES = {65552: "float16", 65568: "float32", 65600: "float64", 131104: "int32"}


@dataclass(frozen=True)
class Artefact:
    """One model artefact: what it is and which files make it up (relative to the
    artefact's own path; one ``""`` entry for a single file)."""

    path: Path
    format: str
    precision: str
    inputs: tuple[TensorSpec, ...] | None
    outputs: tuple[TensorSpec, ...] | None
    files: tuple[tuple[str, Path], ...] = field(default=())
    note: str = ""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"bad artefact format {self.format!r}")
        if not self.files:
            object.__setattr__(self, "files", (("", self.path),))


def detect_format(path: Path) -> str:
    fmt = _SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise BuildError(
            f"{Path(path).name}: unknown model format (want a .onnx or .tflite file, or a "
            ".mlpackage directory)")
    return fmt


def read_artefact(path: Path) -> Artefact:
    path = Path(path)
    fmt = detect_format(path)
    if not path.exists():
        raise BuildError(f"model file {path} does not exist")
    if fmt == "onnx":
        from .onnx_spec import guess_precision, load_model, model_io

        model = load_model(path)
        ins, outs = model_io(model, path.name)
        return Artefact(path, "onnx", guess_precision(model), tuple(ins), tuple(outs))
    if fmt == "tflite":
        return _read_tflite(path)
    return read_mlpackage(path)


# --------------------------------------------------------------------------- TFLite


def _interpreter_module() -> Any:
    try:
        from ai_edge_litert import interpreter
        return interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter
        return interpreter
    except ImportError:
        raise BuildError(
            "reading a .tflite model needs a LiteRT runtime: pip install ai-edge-litert "
            "(or tflite-runtime)") from None


def _tflite_interpreter(path: Path) -> Any:
    mod = _interpreter_module()
    try:
        interp = mod.Interpreter(model_path=str(path))
        interp.allocate_tensors()
    except Exception as exc:  # the interpreter raises ValueError/RuntimeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BuildError(f"{path.name} is not a loadable TFLite model: {first}") from None
    return interp


def _tflite_spec(detail: Mapping[str, Any], role: str, name: str) -> TensorSpec:
    dtype = np.dtype(detail["dtype"]).name
    sig = detail.get("shape_signature")
    shape = sig if sig is not None and len(sig) == len(detail["shape"]) else detail["shape"]
    try:
        return TensorSpec(name=str(detail["name"]), dtype=dtype,
                          shape=tuple(declared_dim(d, role) for d in shape))
    except ManifestError as exc:
        raise BuildError(f"{name}: {role} {detail['name']!r}: {exc.detail}") from None


def _read_tflite(path: Path) -> Artefact:
    interp = _tflite_interpreter(path)
    ins = tuple(_tflite_spec(d, "input", path.name) for d in interp.get_input_details())
    outs = tuple(_tflite_spec(d, "output", path.name) for d in interp.get_output_details())
    precision = "fp32"
    kinds = {np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
    quantized = any((t.get("quantization") or (0.0, 0))[0] not in (0, 0.0)
                    for t in interp.get_tensor_details())
    if quantized or kinds & {"int8", "uint8"}:
        precision = "int8"
    elif "float16" in kinds:
        precision = "fp16"
    return Artefact(path, "tflite", precision, ins, outs)


# --------------------------------------------------------------------------- Core ML


def read_mlpackage(path: Path) -> Artefact:
    """Structural validation of a ``.mlpackage`` directory (see the module docstring)."""
    path = Path(path)
    if not path.is_dir():
        raise BuildError(f"{path.name}: a .mlpackage must be a directory")
    manifest_path = path / "Manifest.json"
    if not manifest_path.is_file():
        raise BuildError(f"{path.name}: no Manifest.json (not a Core ML package)")
    try:
        pkg = json.loads(manifest_path.read_text(encoding="utf-8"))
        root_id = pkg["rootModelIdentifier"]
        entry = pkg["itemInfoEntries"][root_id]
        rel = entry["path"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BuildError(
            f"{path.name}/Manifest.json is not a readable Core ML package manifest "
            f"({type(exc).__name__}: {exc}); it needs rootModelIdentifier and an "
            "itemInfoEntries item for it with a path") from None
    spec_path = (path / "Data" / str(rel)).resolve()
    if not spec_path.is_relative_to(path.resolve()) or not spec_path.is_file():
        raise BuildError(f"{path.name}: the root model spec Data/{rel} named in Manifest.json "
                         "does not exist")
    files: list[tuple[str, Path]] = []
    for item in sorted(path.rglob("*")):
        if item.is_symlink():
            raise BuildError(f"{path.name}: {item.relative_to(path)} is a symlink; a bundle "
                             "carries regular files only")
        if item.is_file():
            files.append((item.relative_to(path).as_posix(), item))
    if len(files) > MAX_PACKAGE_FILES:
        raise BuildError(f"{path.name} has {len(files)} files (limit {MAX_PACKAGE_FILES})")
    ins, outs, precision, note = _coreml_io(spec_path, path.name)
    return Artefact(path, "mlpackage", precision, ins, outs, tuple(files), note)


def _coreml_io(spec_path: Path, name: str
               ) -> tuple[tuple[TensorSpec, ...] | None, tuple[TensorSpec, ...] | None, str, str]:
    try:
        from coremltools.proto import Model_pb2
    except ImportError:
        return None, None, "fp32", ("I/O not checked: pip install coremltools to read the "
                                    "Core ML spec")
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(spec_path.read_bytes())
    except Exception as exc:  # protobuf DecodeError
        raise BuildError(f"{name}: the root model spec is not a Core ML model ({exc})") from None

    def specs(features: Any, role: str) -> tuple[TensorSpec, ...]:
        out = []
        for f in features:
            arr = f.type.multiArrayType if f.type.WhichOneof("Type") == "multiArrayType" else None
            if arr is None:
                raise BuildError(f"{name}: {role} {f.name!r} is a {f.type.WhichOneof('Type')}, "
                                 "not a multi-array; bundles carry tensors only")
            dtype = _COREML_DTYPES.get(arr.dataType)
            if dtype is None:
                raise BuildError(f"{name}: {role} {f.name!r} has Core ML data type {arr.dataType}")
            out.append(TensorSpec(name=f.name, dtype=dtype,
                                  shape=tuple(declared_dim(d, role) for d in arr.shape)))
        return tuple(out)

    ins = specs(spec.description.input, "input")
    outs = specs(spec.description.output, "output")
    precision = "fp16" if any(s.dtype == "float16" for s in ins + outs) else "fp32"
    return ins, outs, precision, ""


# --------------------------------------------------------------------------- checks


def _dims_fit(ref: Sequence[Any], got: Sequence[Any]) -> bool:
    return len(ref) == len(got) and all(
        not (isinstance(a, int) and isinstance(b, int)) or a == b for a, b in zip(ref, got, strict=True))


def _signature(specs: Sequence[TensorSpec]) -> tuple[Any, ...]:
    """Names, dtypes and shapes, every dynamic dimension (named, ``-1`` or unset) alike."""
    return tuple((s.name, s.dtype, tuple(d if isinstance(d, int) else None for d in s.shape))
                 for s in specs)


def check_signature(art: Artefact, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                    reference: str) -> None:
    """``art`` must take and give what the reference model does: by position (dtype, rank,
    fixed dims) for every format, and by name too for ONNX and Core ML (which are fed by
    name); a dynamic dimension matches any other dynamic one (``N`` and ``-1`` alike).
    Specs that could not be read are not checked."""
    if art.inputs is None or art.outputs is None:
        return
    by_name = art.format in ("onnx", "mlpackage")
    if art.format == "onnx" and (_signature(art.inputs), _signature(art.outputs)) != (
            _signature(inputs), _signature(outputs)):
        raise BuildError(
            f"{art.path.name} does not share {reference}'s inputs/outputs; every model in "
            "one bundle must have the same signature (build separate bundles instead)")
    for role, ref, got in (("input", inputs, art.inputs), ("output", outputs, art.outputs)):
        if len(ref) != len(got):
            raise BuildError(f"{art.path.name} has {len(got)} {role}s, {reference} has {len(ref)}")
        for i, (r, g) in enumerate(zip(ref, got, strict=True)):
            problem = None
            if by_name and r.name != g.name:
                problem = f"is named {g.name!r}"
            elif r.dtype != g.dtype:
                problem = f"is {g.dtype}"
            elif not _dims_fit(r.shape, g.shape):
                problem = f"has shape {list(g.shape)}"
            if problem:
                raise BuildError(
                    f"{art.path.name}: {role} {i} ({g.name!r}) {problem}, but {reference}'s "
                    f"{role} {i} is {r.describe()}; every artefact must match the first model "
                    "by position, dtype and shape")


def can_run(art: Artefact) -> tuple[bool, str]:
    """Whether the build can run this artefact here (Core ML prediction needs macOS)."""
    if art.format == "mlpackage" and platform.system() != "Darwin":
        return False, (f"not run at build time: Core ML prediction needs macOS (this is "
                       f"{platform.system()})")
    return True, ""


def run_artefact(art: Artefact, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                 arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``art`` on the golden inputs (keyed by the reference names); results keyed by
    the reference output names (positional for TFLite)."""
    if art.format == "onnx":
        from .builder import run_reference

        return run_reference(art.path, inputs, outputs, arrays)
    if art.format == "tflite":
        return _run_tflite(art, inputs, outputs, arrays)
    import coremltools as ct  # macOS only (can_run)

    try:
        result = ct.models.MLModel(str(art.path)).predict({k: np.asarray(v) for k, v in arrays.items()})
    except Exception as exc:
        raise BuildError(f"{art.path.name}: Core ML prediction failed: {exc}") from None
    return {s.name: np.asarray(result[s.name]) for s in outputs}


def _run_tflite(art: Artefact, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    interp = _tflite_interpreter(art.path)
    try:
        ins = interp.get_input_details()
        for spec, d in zip(inputs, ins, strict=True):
            arr = np.asarray(arrays[spec.name], dtype=d["dtype"])
            if tuple(arr.shape) != tuple(d["shape"]):
                interp.resize_tensor_input(d["index"], arr.shape)
        interp.allocate_tensors()
        for spec, d in zip(inputs, interp.get_input_details(), strict=True):
            interp.set_tensor(d["index"], np.asarray(arrays[spec.name], dtype=d["dtype"]))
        interp.invoke()
        return {spec.name: interp.get_tensor(d["index"]).copy()
                for spec, d in zip(outputs, interp.get_output_details(), strict=True)}
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BuildError(f"{art.path.name} failed on the golden inputs in LiteRT: {first}") from None


__all__ = ["FORMATS", "Artefact", "can_run", "check_signature", "detect_format",
           "read_artefact", "read_mlpackage", "run_artefact"]
