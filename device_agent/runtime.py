"""A loaded model: a verified slot opened on the best delegate that passes its golden gate.

``ModelRuntime.load`` refuses a slot whose files do not match its manifest, then tries the
(variant, delegate) pairs planned by ``device_agent.variant_selection``; with ``gate=True``
a pair is kept only when the bundle's golden inputs reproduce the reference outputs within
the variant's tolerance, and the fastest passing pair (or the operator override's) serves.
Every pair tried or skipped, and why, is kept in ``attempts``/``outcomes``; ``execution``
is the proof of what runs (providers, node counts, fallback) for telemetry.

``predict`` is thread safe (ONNX Runtime sessions allow concurrent ``run``) and refuses
inputs that do not fit the manifest with a precise ``PredictError``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from delegates.base import Backend, DelegateError, ProbeResult, Session, execution_of
from delegates.registry import default_backends, probe_all
from device_agent import bundle_access as ba
from device_agent import variant_selection as vs
from device_agent.errors import PredictError, SlotError
from device_agent.predict_inputs import as_input_array
from device_agent.telemetry import latency_percentiles
from device_agent.variant_selection import Override

__all__ = ["GoldenResult", "ModelRuntime", "Prediction", "load_slot_manifest"]

_DTYPES = {
    "float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool",
}


class Prediction(NamedTuple):
    """One predict's answer: an immutable value (a named tuple: built in a quarter of the
    time a frozen dataclass takes, on the per-call path)."""

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
    fixed: tuple[tuple[int, int], ...] = ()  # (axis, size) of every fixed dimension
    named: tuple[tuple[int, str], ...] = ()  # (axis, name): same name, same size

    @classmethod
    def of(cls, t: Any) -> _InputSpec:
        shape = tuple(t.shape)
        return cls(t.name, np.dtype(t.dtype), shape,
                   tuple((a, d) for a, d in enumerate(shape) if isinstance(d, int)),
                   tuple((a, d) for a, d in enumerate(shape) if isinstance(d, str)))


class _PositionalSession:
    """A session whose artefact names its tensors differently from the manifest (TFLite:
    ``serving_default_x:0``): feeds and results are renamed by position, which the builder
    checked (position, dtype, shape). Everything else is the wrapped session's."""

    def __init__(self, inner: Session, inputs: Sequence[str], outputs: Sequence[str]) -> None:
        if len(inner.input_names) != len(inputs) or len(inner.output_names) != len(outputs):
            raise DelegateError(
                f"{inner.delegate}: the artefact has {len(inner.input_names)} inputs/"
                f"{len(inner.output_names)} outputs, the manifest {len(inputs)}/{len(outputs)}")
        self.inner = inner
        self._in = dict(zip(inputs, inner.input_names, strict=True))
        self._out = dict(zip(inner.output_names, outputs, strict=True))
        self.input_names = tuple(inputs)
        self.output_names = tuple(outputs)

    def __getattr__(self, name: str) -> Any:  # delegate, requested, fallback, node_counts...
        return getattr(self.inner, name)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.inner.run({self._in.get(k, k): v for k, v in feeds.items()})
        return {self._out.get(k, k): v for k, v in out.items()}

    def close(self) -> None:
        self.inner.close()


def _by_manifest_names(session: Session, manifest: Any) -> Session:
    ins = tuple(t.name for t in manifest.inputs)
    outs = tuple(t.name for t in manifest.outputs)
    if tuple(session.input_names) == ins and tuple(session.output_names) == outs:
        return session
    try:
        return _PositionalSession(session, ins, outs)
    except DelegateError:
        session.close()
        raise


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
        self.outcomes: tuple[vs.Outcome, ...] = ()
        self.choice = ""
        self.override: dict[str, Any] | None = None
        self.bundle = f"{manifest.name}@{manifest.version}"
        self.delegate = session.delegate
        self._inputs = tuple(_InputSpec.of(t) for t in manifest.inputs)
        self._names = frozenset(s.name for s in self._inputs)
        # (name, dtype, finite check) for the call path: None for non-float inputs (no
        # check), True for float32/float64 (the dot product of the input with itself is
        # finite), False for other floats (float16: as_input_array's own check)
        self._casts = tuple((s.name, s.dtype, None if s.dtype.kind != "f" else
                             s.dtype.char in "fd") for s in self._inputs)
        self._checked_shapes: list[tuple[int, ...]] = []
        """Input shapes of the last call that passed ``_check_shapes`` (same shapes again:
        nothing to check; a predict stream keeps its shapes)."""

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
        override: Override | None = None,
    ) -> ModelRuntime:
        """Open the slot on the (variant, delegate) pair chosen by ``variant_selection``.

        Without ``gate`` the first pair that opens on its requested delegate serves. With
        ``gate`` every candidate pair runs the golden inputs; failing pairs are skipped
        with their measured error, and the override's pair or else the fastest passing pair
        serves. No pair passes: ``SlotError`` naming every attempt."""
        manifest = load_slot_manifest(slot_dir)
        if not manifest.variants:
            raise SlotError(f"{manifest.name}@{manifest.version} has no variant")
        blist = list(backends) if backends is not None else default_backends()
        plist = list(probes) if probes is not None else probe_all(
            vs.worth_probing(blist, preferred, manifest.variants, override))
        by_name = {b.name: b for b in blist}
        candidates, outcomes = vs.plan(
            manifest.variants, list(preferred), plist,
            {b.name: b.formats for b in blist}, override,
        )
        opened: list[tuple[vs.Outcome, ModelRuntime]] = []
        for cand in candidates:
            variant = manifest.variant(cand.variant)
            out, rt = cls._try(manifest, slot_dir, variant, cand, by_name[cand.delegate],
                               options or {}, gate=gate, timed=gate and len(candidates) > 1)
            outcomes.append(out)
            if rt is not None:
                opened.append((out, rt))
                if not gate:
                    break
        best, why = vs.choose(outcomes, override)
        attempts = [o.line() for o in outcomes]
        chosen: ModelRuntime | None = None
        for out, rt in opened:
            if out is best:
                chosen = rt
            else:
                rt.close()
        if chosen is None or best is None:
            raise SlotError(
                f"no delegate can run {manifest.name}@{manifest.version}: "
                + "; ".join(attempts or ["no candidate (variant, delegate) pair"])
            )
        attempts.append(f"{best.delegate}: selected ({chosen.session.delegate}, variant "
                        f"{best.variant}: {why})")
        chosen.attempts = tuple(attempts)
        chosen.outcomes = tuple(outcomes)
        chosen.choice = why
        if override is not None:
            chosen.override = {"requested": override.describe(), "honoured": best.preferred}
        return chosen

    @classmethod
    def _try(
        cls, manifest: Any, slot_dir: Path, variant: Any, cand: vs.Candidate,
        backend: Backend, options: Mapping[str, Any], *, gate: bool, timed: bool,
    ) -> tuple[vs.Outcome, ModelRuntime | None]:
        """Open one pair, check it; the runtime is returned only when it passed."""
        def outcome(result: str, detail: str, **kw: Any) -> vs.Outcome:
            return vs.Outcome(cand.variant, cand.delegate, result, detail,
                              preferred=cand.preferred, **kw)

        try:
            session = backend.open(ba.slot_file(slot_dir, variant.file), options)
            session = _by_manifest_names(session, manifest)
        except DelegateError as e:
            return outcome("open-failed", str(e)), None
        if session.fallback:
            session.close()
            return outcome("fell-back", getattr(session, "fallback_reason", None)
                           or f"runs on {session.delegate}"), None
        rt = cls(manifest, slot_dir, session, variant)
        if not gate:
            return outcome("passed", f"opened on {session.delegate}, not gated"), rt
        result = rt.golden_check()
        if not result.passed:
            rt.close()
            return outcome("gate-failed", result.detail, max_abs_error=result.max_abs_error), None
        ms = rt._golden_latency_ms() if timed else None
        return outcome("passed", f"golden gate passed on {session.delegate}",
                       max_abs_error=result.max_abs_error, latency_ms=ms), rt

    def _golden_latency_ms(self, runs: int = 5) -> float | None:
        if self.manifest.golden is None:
            return None
        try:
            feeds, _ = ba.read_golden(self.slot_dir, self.manifest)
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                self.session.run(dict(feeds))
                times.append((time.perf_counter() - t0) * 1000.0)
        except Exception:
            return None
        return latency_percentiles(np.asarray(times))[0]  # the median, without numpy.ma

    @property
    def execution(self) -> dict[str, Any]:
        """Proof of what serves: the session's ``Execution`` plus variant and choice, and
        with an operator override ``override``: ``{"requested": "delegate=cuda",
        "honoured": false}`` (a requested accelerator this device could not use)."""
        ex = {**execution_of(self.session).to_dict(), "variant": self.variant.id,
              "choice": self.choice or None}
        if self.override is not None:
            ex["override"] = dict(self.override)
        return ex

    # -- inference -------------------------------------------------------------------

    def _feeds(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if type(inputs) is not dict and not isinstance(inputs, Mapping):
            raise PredictError("inputs must be an object mapping input names to tensors")
        if not self._names.issuperset(inputs):
            unknown = [k for k in inputs if k not in self._names]
            raise PredictError(
                f"unknown input {unknown[0]!r}; the model takes "
                + ", ".join(repr(s.name) for s in self._inputs)
            )
        feeds: dict[str, np.ndarray] = {}
        shapes = []
        for name, dtype, vdot_check in self._casts:
            try:
                value = inputs[name]
            except KeyError:
                raise PredictError(f"missing input {name!r}") from None
            # fast path (an array of the input's dtype, C order, no NaN or inf) inlined:
            # it is most calls, and each Python call here costs ~0.1 us
            if not (type(value) is np.ndarray and value.dtype is dtype
                    and value.flags.c_contiguous
                    and (vdot_check is None
                         or (vdot_check and math.isfinite(np.vdot(value, value))))):
                value = as_input_array(name, value, dtype)
                if not value.flags.c_contiguous:
                    value = np.ascontiguousarray(value)
            feeds[name] = value
            shapes.append(value.shape)
        if shapes != self._checked_shapes:  # the same shapes as the last good call: checked
            self._check_shapes(feeds)
            self._checked_shapes = shapes
        return feeds

    def _check_shapes(self, feeds: dict[str, np.ndarray]) -> None:
        """Rank, fixed dimensions, and named dimensions equal across inputs."""
        dims: dict[str, int] = {}
        for spec in self._inputs:
            shape = feeds[spec.name].shape
            if len(shape) != len(spec.shape):
                raise PredictError(
                    f"input {spec.name!r}: expected rank {len(spec.shape)} "
                    f"(shape {list(spec.shape)}), got rank {len(shape)} (shape {list(shape)})"
                )
            for axis, want in spec.fixed:
                if shape[axis] != want:
                    raise PredictError(
                        f"input {spec.name!r}: dimension {axis} must be {want}, got "
                        f"{shape[axis]} (shape {list(shape)}, expected {list(spec.shape)})"
                    )
            for axis, dim_name in spec.named:
                got = shape[axis]
                seen = dims.setdefault(dim_name, got)
                if seen != got:
                    raise PredictError(
                        f"input {spec.name!r}: dimension {axis} ({dim_name}) is {got}, "
                        f"but {dim_name} is {seen} in another input"
                    )

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
            "execution": self.execution,
            "inputs": tensors(self.manifest.inputs),
            "outputs": tensors(self.manifest.outputs),
        }

    def close(self) -> None:
        self.session.close()
