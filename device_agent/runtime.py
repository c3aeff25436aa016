"""A loaded model: a verified slot opened on the best delegate that passes its golden gate.

``ModelRuntime.load`` refuses a slot whose files do not match its manifest, then tries the
delegates chosen by ``delegates.policy`` in order; with ``gate=True`` a delegate is kept only
when the bundle's golden inputs reproduce the reference outputs within the variant's
tolerance. Every delegate tried or skipped, and why, is kept in ``attempts``.

``predict`` is thread safe (ONNX Runtime sessions allow concurrent ``run``) and refuses
inputs that do not fit the manifest with a precise ``PredictError``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from delegates.base import Backend, DelegateError, ProbeResult, Session
from delegates.policy import select
from delegates.registry import default_backends, probe_all
from device_agent import bundle_access as ba
from device_agent.errors import PredictError, SlotError

__all__ = ["GoldenResult", "ModelRuntime", "Prediction", "load_slot_manifest"]

_DTYPES = {
    "float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool",
}


@dataclass(frozen=True)
class Prediction:
    outputs: dict[str, np.ndarray]
    bundle: str
    delegate: str
    latency_ms: float


@dataclass(frozen=True)
class GoldenResult:
    passed: bool
    max_abs_error: float
    detail: str


@dataclass(frozen=True)
class _InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[Any, ...]


def load_slot_manifest(slot_dir: Path) -> Any:
    """Read and check a slot: manifest parsed, every file re-hashed (``SlotError`` if not)."""
    try:
        manifest = ba.read_manifest(slot_dir)
        ba.verify_slot(slot_dir, manifest)
    except SlotError:
        raise
    except FileNotFoundError as e:
        raise SlotError(f"slot {slot_dir} is empty or incomplete: {e}") from e
    except Exception as e:
        raise SlotError(f"slot {slot_dir} does not match its manifest: {e}") from e
    return manifest


class ModelRuntime:
    def __init__(
        self,
        manifest: Any,
        slot_dir: Path,
        session: Session,
        variant: Any,
        attempts: Sequence[str] = (),
    ) -> None:
        self.manifest = manifest
        self.slot_dir = Path(slot_dir)
        self.session = session
        self.variant = variant
        self.attempts = tuple(attempts)
        self.bundle = f"{manifest.name}@{manifest.version}"
        self.delegate = session.delegate
        self._inputs = tuple(
            _InputSpec(t.name, np.dtype(t.dtype), tuple(t.shape)) for t in manifest.inputs
        )
        self._names = frozenset(s.name for s in self._inputs)

    # -- loading ---------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        slot_dir: Path,
        preferred: Sequence[str] = ("cpu",),
        *,
        backends: Sequence[Backend] | None = None,
        probes: Sequence[ProbeResult] | None = None,
        gate: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> ModelRuntime:
        """Open the slot on the first preferred delegate that opens (and passes the gate)."""
        manifest = load_slot_manifest(slot_dir)
        variants = [v for v in manifest.variants if v.format == "onnx"] or list(manifest.variants)
        if not variants:
            raise SlotError(f"{manifest.name}@{manifest.version} has no variant")
        variant = variants[0]
        blist = list(backends) if backends is not None else default_backends()
        plist = list(probes) if probes is not None else probe_all(blist)
        by_name = {b.name: b for b in blist}
        selection = select(list(preferred), plist)
        attempts = [f"{s.name}: skipped ({s.reason})" for s in selection.skipped]
        model_path = ba.slot_file(slot_dir, variant.file)
        for name in selection.candidates:
            backend = by_name[name]
            if variant.format not in backend.formats:
                attempts.append(f"{name}: skipped (does not run {variant.format})")
                continue
            try:
                session = backend.open(model_path, options or {})
            except DelegateError as e:
                attempts.append(f"{name}: open failed ({e})")
                continue
            if session.fallback:
                attempts.append(f"{name}: fell back to {session.delegate}")
            rt = cls(manifest, slot_dir, session, variant, attempts)
            if gate:
                result = rt.golden_check()
                if not result.passed:
                    attempts.append(f"{name}: golden gate failed ({result.detail})")
                    session.close()
                    continue
            attempts.append(f"{name}: selected ({session.delegate})")
            rt.attempts = tuple(attempts)
            return rt
        raise SlotError(
            f"no delegate can run {manifest.name}@{manifest.version}: " + "; ".join(attempts)
        )

    # -- inference -------------------------------------------------------------------

    def _feeds(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(inputs, Mapping):
            raise PredictError("inputs must be an object mapping input names to tensors")
        unknown = [k for k in inputs if k not in self._names]
        if unknown:
            raise PredictError(
                f"unknown input {unknown[0]!r}; the model takes "
                + ", ".join(repr(s.name) for s in self._inputs)
            )
        feeds: dict[str, np.ndarray] = {}
        dims: dict[str, int] = {}
        for spec in self._inputs:
            if spec.name not in inputs:
                raise PredictError(f"missing input {spec.name!r}")
            value = inputs[spec.name]
            try:
                arr = np.asarray(value, dtype=spec.dtype)
            except (ValueError, TypeError, OverflowError) as e:
                raise PredictError(
                    f"input {spec.name!r}: cannot convert to {spec.dtype.name}: {e}"
                ) from e
            if arr.ndim != len(spec.shape):
                raise PredictError(
                    f"input {spec.name!r}: expected rank {len(spec.shape)} "
                    f"(shape {list(spec.shape)}), got rank {arr.ndim} (shape {list(arr.shape)})"
                )
            for axis, (want, got) in enumerate(zip(spec.shape, arr.shape, strict=True)):
                if isinstance(want, int) and want != got:
                    raise PredictError(
                        f"input {spec.name!r}: dimension {axis} must be {want}, got {got} "
                        f"(shape {list(arr.shape)}, expected {list(spec.shape)})"
                    )
                if isinstance(want, str):
                    seen = dims.setdefault(want, got)
                    if seen != got:
                        raise PredictError(
                            f"input {spec.name!r}: dimension {axis} ({want}) is {got}, "
                            f"but {want} is {seen} in another input"
                        )
            feeds[spec.name] = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
        return feeds

    def run_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self.session.run(feeds)
        except DelegateError as e:
            raise PredictError(str(e)) from e

    def predict(self, inputs: Mapping[str, Any]) -> Prediction:
        feeds = self._feeds(inputs)
        t0 = time.perf_counter()
        outputs = self.run_feeds(feeds)
        ms = (time.perf_counter() - t0) * 1000.0
        return Prediction(outputs, self.bundle, self.delegate, ms)

    def golden_check(self) -> GoldenResult:
        """Run the golden inputs; compare with the reference outputs under the tolerance."""
        if self.manifest.golden is None:
            return GoldenResult(True, 0.0, "bundle has no golden vectors")
        try:
            golden_inputs, golden_outputs = ba.read_golden(self.slot_dir, self.manifest)
            actual = self.session.run(dict(golden_inputs))
            passed, max_err, detail = ba.compare(actual, golden_outputs, self.variant.tolerance)
        except Exception as e:  # any failure here fails the gate, with the reason
            return GoldenResult(False, float("inf"), f"golden check error: {e}")
        return GoldenResult(passed, max_err, detail)

    def spec(self) -> dict[str, Any]:
        def tensors(ts: Any) -> list[dict[str, Any]]:
            return [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in ts]

        return {
            "bundle": self.bundle,
            "name": self.manifest.name,
            "version": self.manifest.version,
            "delegate": self.delegate,
            "fallback": self.session.fallback,
            "variant": self.variant.id,
            "inputs": tensors(self.manifest.inputs),
            "outputs": tensors(self.manifest.outputs),
        }

    def close(self) -> None:
        self.session.close()
