"""Safe int8 quantisation: ONNX Runtime quantisation, then proof that the result still agrees.

``quantize_model`` pre-processes the float model (``quant_pre_process``: shape inference and
graph optimisation), quantises it (``dynamic``: int8 weights, activations quantised at run
time; ``static``: QDQ with int8 activations calibrated on the data), then runs both models
on the calibration data (or generated golden inputs) and measures size ratio, latency ratio
and agreement. Agreement is top-1 agreement for classifiers (an integer label output, or a
float output of rank 2 whose argmax is compared) and the mean cosine similarity of the
first float output otherwise. Below ``min_agreement`` the model is refused and not written
(``QuantizeRefusedError`` carrying the report), unless ``force=True``.

Defaults: ``DEFAULT_MIN_TOP1 = 0.98`` for classifiers, ``DEFAULT_MIN_COSINE = 0.99``
otherwise (documented in docs/delegates.md).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BundleError
from .golden import generate_inputs
from .onnx_spec import load_model, model_io

__all__ = [
    "DEFAULT_MIN_COSINE",
    "DEFAULT_MIN_TOP1",
    "MODES",
    "QuantizeError",
    "QuantizeRefusedError",
    "QuantizeReport",
    "agreement",
    "quantize_model",
]

log = logging.getLogger(__name__)

MODES = ("dynamic", "static")
DEFAULT_MIN_TOP1 = 0.98
DEFAULT_MIN_COSINE = 0.99
GENERATED_SAMPLES = 64


class QuantizeError(BundleError):
    reason = "quantize failed"


class QuantizeRefusedError(QuantizeError):
    reason = "quantized model refused"

    def __init__(self, report: QuantizeReport) -> None:
        self.report = report
        super().__init__(report.verdict)


@dataclass(frozen=True)
class QuantizeReport:
    mode: str
    samples: int
    data: str  # "calibration" or "generated"
    preprocessed: bool
    fp32_bytes: int
    int8_bytes: int
    fp32_ms: float
    int8_ms: float
    metric: str  # "top1" or "cosine"
    agreement: float
    min_agreement: float
    max_abs_error: float
    mean_abs_error: float
    cosine: float
    accepted: bool
    forced: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"bad mode {self.mode!r}")
        if self.metric not in ("top1", "cosine"):
            raise ValueError(f"bad metric {self.metric!r}")

    @property
    def size_ratio(self) -> float:
        return self.int8_bytes / self.fp32_bytes if self.fp32_bytes else float("nan")

    @property
    def latency_ratio(self) -> float:
        return self.int8_ms / self.fp32_ms if self.fp32_ms else float("nan")

    @property
    def verdict(self) -> str:
        name = "top-1 agreement" if self.metric == "top1" else "cosine similarity"
        cmp = ">=" if self.accepted else "<"
        return (f"{self.mode} int8 {name} with the float model is {self.agreement:.4f} "
                f"{cmp} {self.min_agreement:.4f} on {self.samples} {self.data} samples "
                f"(max abs error {self.max_abs_error:.4g}, mean {self.mean_abs_error:.4g}, "
                f"cosine {self.cosine:.4f})")

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d.update(size_ratio=self.size_ratio, latency_ratio=self.latency_ratio,
                 verdict=self.verdict)
        return d


# --------------------------------------------------------------------------- metrics


def _is_label(arr: np.ndarray) -> bool:
    return arr.dtype.kind in "iu" and arr.ndim == 1


def agreement(
    ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], *, classifier: bool | None = None
) -> dict[str, Any]:
    """Compare two output dicts (pure). Returns metric, agreement and error figures."""
    names = list(ref)
    floats = [n for n in names if np.asarray(ref[n]).dtype.kind == "f"]
    labels = [n for n in names if _is_label(np.asarray(ref[n]))]
    max_err = mean_err = 0.0
    cos = 1.0
    if floats:
        a = np.asarray(ref[floats[0]], np.float64).reshape(len(ref[floats[0]]), -1)
        b = np.asarray(got[floats[0]], np.float64).reshape(a.shape)
        diff = np.abs(a - b)
        max_err, mean_err = float(diff.max(initial=0.0)), float(diff.mean()) if diff.size else 0.0
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        dots = (a * b).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            per = np.where((na == 0) & (nb == 0), 1.0, dots / (na * nb))
        cos = float(np.nan_to_num(per, nan=0.0).mean()) if per.size else 1.0
    if classifier is None:
        classifier = bool(labels) or any(np.asarray(ref[n]).ndim == 2 for n in floats)
    if classifier and labels:
        top1 = float(np.mean(np.asarray(ref[labels[0]]) == np.asarray(got[labels[0]])))
        return dict(metric="top1", agreement=top1, max_abs_error=max_err,
                    mean_abs_error=mean_err, cosine=cos)
    if classifier and floats:
        a, b = np.asarray(ref[floats[0]]), np.asarray(got[floats[0]])
        top1 = float(np.mean(a.argmax(axis=-1) == b.argmax(axis=-1)))
        return dict(metric="top1", agreement=top1, max_abs_error=max_err,
                    mean_abs_error=mean_err, cosine=cos)
    return dict(metric="cosine", agreement=cos, max_abs_error=max_err,
                mean_abs_error=mean_err, cosine=cos)


# --------------------------------------------------------------------------- I/O shell


def _session(path: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise QuantizeError(f"onnxruntime cannot open {path.name}: {e}") from e


def _run_all(sess: Any, data: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    names = [o.name for o in sess.get_outputs()]
    n = len(next(iter(data.values())))
    rows: list[list[np.ndarray]] = []
    t0 = time.perf_counter()
    for i in range(n):
        rows.append(sess.run(names, {k: v[i : i + 1] for k, v in data.items()}))
    ms = (time.perf_counter() - t0) * 1000.0 / max(n, 1)
    return {name: np.concatenate([r[j] for r in rows]) for j, name in enumerate(names)}, ms


def _load_data(
    model_path: Path, calibration: Path | None, dims: Mapping[str, int] | None
) -> tuple[dict[str, np.ndarray], str]:
    inputs, _ = model_io(load_model(model_path), model_path.name)
    if calibration is None:
        d = {**{s: GENERATED_SAMPLES for spec in inputs for s in spec.shape
                if isinstance(s, str)}, **dict(dims or {})}
        for spec in inputs:
            if spec.shape and spec.shape[0] is None:
                d.setdefault(f"{spec.name}:0", GENERATED_SAMPLES)
        return generate_inputs(inputs, d, seed=0), "generated"
    try:
        with np.load(calibration, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError) as e:
        raise QuantizeError(f"cannot read calibration data {calibration}: {e}") from e
    out: dict[str, np.ndarray] = {}
    for spec in inputs:
        if spec.name not in arrays:
            raise QuantizeError(f"calibration data has no array {spec.name!r} "
                                f"(has {', '.join(sorted(arrays)) or 'none'})")
        out[spec.name] = np.ascontiguousarray(arrays[spec.name].astype(spec.dtype))
    counts = {len(a) for a in out.values()}
    if len(counts) != 1 or 0 in counts:
        raise QuantizeError("calibration arrays must share a non-zero leading dimension")
    return out, "calibration"


def _with_default_domain(model: Path, tmp: Path) -> Path:
    """ORT's quantiser needs exactly one ``ai.onnx`` opset import; scikit-learn exports
    may have none or a duplicate one. Normalise the imports on a copy (no node changes)."""
    import onnx

    proto = load_model(model)
    versions: dict[str, int] = {}
    for op in proto.opset_import:
        domain = "" if op.domain == "ai.onnx" else op.domain
        versions[domain] = max(versions.get(domain, 0), op.version)
    if len(versions) == len(proto.opset_import) and "" in versions:
        return model
    versions.setdefault("", 17)
    del proto.opset_import[:]
    proto.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in versions.items())
    onnx.save(proto, tmp)
    return tmp


class _Reader:
    """``CalibrationDataReader`` over the data, one sample at a time."""

    def __init__(self, data: Mapping[str, np.ndarray]) -> None:
        n = len(next(iter(data.values())))
        self._it = iter([{k: v[i : i + 1] for k, v in data.items()} for i in range(n)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_model(
    model: Path,
    out: Path,
    *,
    mode: str = "dynamic",
    calibration: Path | None = None,
    min_agreement: float | None = None,
    force: bool = False,
    dims: Mapping[str, int] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> QuantizeReport:
    """Quantise ``model`` to ``out`` if it agrees with the float model (see module doc);
    ``on_step`` is told the name of each long step as it starts."""
    step = on_step or (lambda _text: None)
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in MODES:
        raise QuantizeError(f"bad mode {mode!r} (want {' or '.join(MODES)})")
    model, out = Path(model), Path(out)
    step("loading the evaluation inputs")
    data, source = _load_data(model, calibration, dims)
    with tempfile.TemporaryDirectory(prefix="edgefleet-quant-") as tmp:
        source_model = _with_default_domain(model, Path(tmp) / "src.onnx")
        pre = Path(tmp) / "pre.onnx"
        preprocessed = True
        step("pre-processing the float model")
        try:
            quant_pre_process(str(source_model), str(pre), skip_symbolic_shape=True)
        except Exception as e:  # pre-processing is best effort; quantise the original
            log.warning("quant_pre_process failed on %s (%s); quantising it as is", model, e)
            pre, preprocessed = source_model, False
        q = Path(tmp) / "int8.onnx"
        step(f"quantising ({mode})")
        try:
            if mode == "dynamic":
                quantize_dynamic(str(pre), str(q), weight_type=QuantType.QInt8)
            else:
                quantize_static(str(pre), str(q), _Reader(data), quant_format=QuantFormat.QDQ,
                                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        except Exception as e:
            raise QuantizeError(f"onnxruntime {mode} quantisation of {model.name} failed: {e}") from e
        step(f"comparing with the float model on {len(next(iter(data.values())))} samples")
        ref, fp_ms = _run_all(_session(model), data)
        got, q_ms = _run_all(_session(q), data)
        m = agreement(ref, got)
        threshold = min_agreement if min_agreement is not None else (
            DEFAULT_MIN_TOP1 if m["metric"] == "top1" else DEFAULT_MIN_COSINE)
        accepted = m["agreement"] >= threshold
        report = QuantizeReport(
            mode=mode, samples=len(next(iter(data.values()))), data=source,
            preprocessed=preprocessed, fp32_bytes=model.stat().st_size,
            int8_bytes=q.stat().st_size, fp32_ms=fp_ms, int8_ms=q_ms,
            min_agreement=float(threshold), accepted=accepted, forced=force and not accepted,
            **m,
        )
        if not accepted and not force:
            raise QuantizeRefusedError(report)
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = out.with_name(f".{out.name}.tmp")
        staged.write_bytes(q.read_bytes())
        with open(staged, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(staged, out)
    return report
