"""ONNX Runtime backends, one per execution provider (and OpenVINO device).

ONNX Runtime quietly falls back to the CPU provider when the requested one cannot be
created (missing library, no device: asking the OpenVINO EP for device GPU on a machine
without one yields a CPU-only session and raises nothing). ``OrtBackend.open`` therefore
proves what runs: it reads the providers the session really got, profiles one warm-up run
and counts the graph nodes each provider executed (``delegates.ort_profile``). A requested
accelerator that runs no node is ``fallback=True`` with a ``fallback_reason`` that carries
the node counts.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from delegates.base import DelegateError, DelegateUnavailableError, ProbeResult
from delegates.ort_profile import node_counts_from_profile, warmup_feeds
from delegates.ort_providers import ORT_EPS

__all__ = ["CPU_PROVIDER", "OrtBackend", "OrtSession", "provider_short_name"]

log = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"

# ORT provider names -> short delegate names (as written in manifests, "cpu", "cuda", ...).
_SHORT = {
    "CPUExecutionProvider": "cpu",
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "tensorrt",
    "OpenVINOExecutionProvider": "openvino",
    "CoreMLExecutionProvider": "coreml",
    "QNNExecutionProvider": "qnn",
    "NnapiExecutionProvider": "nnapi",
    "XnnpackExecutionProvider": "xnnpack",
    "DmlExecutionProvider": "directml",
}

# Session options (not provider options) accepted by ``OrtBackend.open``.
SESSION_OPTION_KEYS = frozenset({"intra_op_threads", "prove_execution", "provider_options"})


def provider_short_name(provider: str) -> str:
    """``CUDAExecutionProvider`` -> ``cuda``; unknown providers are lower-cased as is."""
    return _SHORT.get(provider, provider.removesuffix("ExecutionProvider").lower())


def _fallback_reason(
    requested: str, providers: tuple[str, ...], counts: Mapping[str, int]
) -> str | None:
    if requested == CPU_PROVIDER:
        return None
    where = ", ".join(f"{p}={n}" for p, n in counts.items()) or "not measured"
    if requested not in providers:
        return (f"{requested} was requested but onnxruntime created the session with "
                f"{', '.join(providers) or 'no provider'} only (nodes: {where})")
    if counts and counts.get(requested, 0) == 0:
        return f"{requested} is registered but ran no graph node (nodes: {where})"
    return None


class OrtSession:
    """An ``onnxruntime.InferenceSession`` with proof of the delegate it really runs on."""

    __slots__ = (
        "_sess",
        "_run",
        "_output_names",
        "delegate",
        "requested",
        "fallback",
        "fallback_reason",
        "node_counts",
        "providers",
        "input_names",
        "output_names",
    )

    def __init__(
        self, sess: Any, requested: str, node_counts: Mapping[str, int] | None = None
    ) -> None:
        self._sess = sess
        self.requested = requested
        self.providers: tuple[str, ...] = tuple(sess.get_providers())
        self.node_counts: dict[str, int] = dict(node_counts or {})
        self.fallback_reason = _fallback_reason(requested, self.providers, self.node_counts)
        self.fallback = self.fallback_reason is not None
        if self.node_counts:
            actual = max(self.node_counts, key=lambda p: self.node_counts[p])
            if requested in self.node_counts:
                actual = requested
        else:
            actual = requested if requested in self.providers else (
                self.providers[0] if self.providers else CPU_PROVIDER)
        self.delegate = f"onnxruntime:{actual}"
        self.input_names: tuple[str, ...] = tuple(i.name for i in sess.get_inputs())
        self.output_names: tuple[str, ...] = tuple(o.name for o in sess.get_outputs())
        self._output_names = list(self.output_names)
        self._run = _binding_run(sess, self.providers)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        run = self._run
        try:
            if run is not None:
                values = run(self._output_names, feeds, None)
            else:
                values = self._sess.run(self._output_names, feeds)
        except Exception as e:  # onnxruntime raises its own exception types
            raise DelegateError(f"{self.delegate}: run failed: {e}") from e
        # ORT returns one value per name asked: no strict zip on the per-call path
        return dict(zip(self._output_names, values, strict=False))

    def close(self) -> None:
        self._sess = None
        self._run = None


def _binding_run(sess: Any, providers: tuple[str, ...]) -> Any:
    """The C++ binding's ``run`` that ``InferenceSession.run`` wraps, for a CPU-only
    session; else None (``run`` goes through the public wrapper).

    The wrapper re-checks what the binding checks anyway (missing inputs), looks for
    ``OrtValue`` feeds (the agent feeds numpy arrays only) and, on an execution-provider
    failure, retries on its fallback providers, which a CPU-only session has none of. It
    costs ~0.7-1 us a call (``python -m bench.metrics``), a fifth of the agent's
    in-process budget. ``_sess`` is ONNX Runtime's private attribute: when a version lacks
    it, the public ``run`` serves."""
    inner: Any = getattr(sess, "_sess", None)
    run = getattr(inner, "run", None)
    if providers != (CPU_PROVIDER,) or not callable(run):
        return None
    return run


def _profile_once(sess: Any) -> dict[str, int]:
    """Run one warm-up with zero inputs, end profiling, count nodes, delete the file."""
    feeds = warmup_feeds(sess.get_inputs())
    path = ""
    try:
        if feeds is not None:
            try:
                sess.run(None, feeds)
            except Exception as e:  # a model that needs real data: counts stay unknown
                log.info("warm-up run for node counts failed: %s", e)
        path = sess.end_profiling()
        return node_counts_from_profile(Path(path)) if path else {}
    finally:
        if path:
            Path(path).unlink(missing_ok=True)


class OrtBackend:
    """ONNX Runtime with one requested execution provider (CPU as the safety net).

    ``name`` defaults to the provider's short name; the registry builds one backend per
    entry of ``delegates.ort_providers.ORT_EPS`` (so OpenVINO appears as ``openvino``,
    ``openvino-gpu`` and ``openvino-npu``, differing in ``device_type``).
    """

    formats = frozenset({"onnx"})

    def __init__(
        self,
        provider: str = CPU_PROVIDER,
        provider_options: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        option_keys: frozenset[str] | None = None,
    ) -> None:
        self.provider = provider
        self.provider_options = dict(provider_options or {})
        self.option_keys = option_keys
        self.name = name or provider_short_name(provider)

    def __repr__(self) -> str:
        return f"OrtBackend({self.provider!r}, name={self.name!r})"

    def probe(self) -> ProbeResult:
        try:
            import onnxruntime as ort
        except ImportError as e:
            return ProbeResult(self.name, False, f"onnxruntime is not installed ({e})")
        available = list(ort.get_available_providers())
        details = {"provider": self.provider, "options": dict(self.provider_options),
                   "ort_version": ort.__version__, "ort_providers": available}
        if self.provider not in available:
            return ProbeResult(
                self.name,
                False,
                f"{self.provider} is not in this onnxruntime build "
                f"(has {', '.join(available)})",
                details,
            )
        device = self.provider_options.get("device_type")
        if self.provider == "OpenVINOExecutionProvider" and isinstance(device, str):
            devices = _openvino_devices()
            details["openvino_devices"] = devices
            if devices is not None and device.split(".")[0] not in devices:
                return ProbeResult(self.name, False,
                                   f"OpenVINO has no {device} device here (has {', '.join(devices)})",
                                   details)
        return ProbeResult(self.name, True, "", details)

    def _provider_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        extra = options.get("provider_options") or {}
        if not isinstance(extra, Mapping):
            raise DelegateError(f"{self.name}: provider_options must be a mapping")
        if self.option_keys is not None:
            unknown = sorted(set(extra) - self.option_keys)
            if unknown:
                raise DelegateError(
                    f"{self.name}: unknown provider option {unknown[0]!r} "
                    f"(known: {', '.join(sorted(self.option_keys)) or 'none'})"
                )
        return {**self.provider_options, **extra}

    def open(self, model_path: Path, options: Mapping[str, Any]) -> OrtSession:
        """Open ``model_path``. Options: ``intra_op_threads`` (int, 0 = ORT default: one
        per physical core; pool threads never spin),
        ``provider_options`` (merged over this backend's), ``prove_execution`` (bool,
        default True: profile one warm-up run to count nodes per provider)."""
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise DelegateUnavailableError(
                "onnxruntime is not installed: pip install onnxruntime"
            ) from e
        unknown = sorted(set(options) - SESSION_OPTION_KEYS)
        if unknown:
            raise DelegateError(f"{self.name}: unknown session option {unknown[0]!r}")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            threads = int(options.get("intra_op_threads", 0) or 0)
        except (TypeError, ValueError) as e:
            raise DelegateError(f"intra_op_threads must be an integer: {e}") from e
        if threads < 0:
            raise DelegateError(f"intra_op_threads must be >= 0, got {threads}")
        so.intra_op_num_threads = threads
        # A device idles between requests: pool threads sleep instead of spinning after
        # each run (ORT spins by default, burning a core), and there is no inter-op pool
        # (graphs run sequentially). docs/local-api.md "ONNX Runtime threads".
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        prove = bool(options.get("prove_execution", True))
        tmp = None
        if prove:
            tmp = tempfile.TemporaryDirectory(prefix="edgefleet-prof-")
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(tmp.name) / "ort")
        providers: list[Any] = [(self.provider, self._provider_options(options))]
        if self.provider != CPU_PROVIDER:
            providers.append(CPU_PROVIDER)
        try:
            try:
                with warnings.catch_warnings():
                    # ORT warns about a missing provider; we detect and record it ourselves.
                    warnings.simplefilter("ignore", UserWarning)
                    sess = ort.InferenceSession(
                        str(model_path), sess_options=so, providers=providers
                    )
            except Exception as e:
                raise DelegateError(
                    f"onnxruntime could not open {model_path.name} on {self.name}: {e}"
                ) from e
            counts = _profile_once(sess) if prove else {}
        finally:
            if tmp is not None:
                tmp.cleanup()
        session = OrtSession(sess, self.provider, counts)
        if session.fallback:
            log.warning("%s: %s (model %s)", self.name, session.fallback_reason, model_path.name)
        return session


def _openvino_devices() -> list[str] | None:
    """OpenVINO's device list when the ``openvino`` runtime module is importable."""
    try:
        import openvino as ov
    except ImportError:
        return None
    try:
        return list(ov.Core().available_devices)
    except Exception:
        return None


def ort_backends() -> list[OrtBackend]:
    """One backend per known execution provider entry, most preferred first."""
    return [OrtBackend(s.provider, s.defaults, name=s.name, option_keys=s.option_keys)
            for s in ORT_EPS]
