"""ONNX Runtime backends, one per execution provider.

ONNX Runtime quietly falls back to the CPU provider when the requested one cannot be
created (missing library, no device). ``OrtSession`` reads the providers the session really
got and records ``fallback=True`` when the requested one is missing, so the caller knows and
can report it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from delegates.base import DelegateError, DelegateUnavailableError, ProbeResult

__all__ = ["CPU_PROVIDER", "OrtBackend", "OrtSession", "provider_short_name"]

log = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"

# Short delegate names (as written in manifests, "cpu", "cuda", ...) -> ORT provider names.
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


def provider_short_name(provider: str) -> str:
    """``CUDAExecutionProvider`` -> ``cuda``; unknown providers are lower-cased as is."""
    return _SHORT.get(provider, provider.removesuffix("ExecutionProvider").lower())


class OrtSession:
    """An ``onnxruntime.InferenceSession`` with the delegate it really runs on."""

    __slots__ = (
        "_sess",
        "_output_names",
        "delegate",
        "requested",
        "fallback",
        "providers",
        "input_names",
        "output_names",
    )

    def __init__(self, sess: Any, requested: str) -> None:
        self._sess = sess
        self.requested = requested
        self.providers: tuple[str, ...] = tuple(sess.get_providers())
        actual = self.providers[0] if self.providers else CPU_PROVIDER
        self.fallback = requested not in self.providers
        self.delegate = f"onnxruntime:{actual}"
        self.input_names: tuple[str, ...] = tuple(i.name for i in sess.get_inputs())
        self.output_names: tuple[str, ...] = tuple(o.name for o in sess.get_outputs())
        self._output_names = list(self.output_names)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self._sess.run(self._output_names, feeds)
        except Exception as e:  # onnxruntime raises its own exception types
            raise DelegateError(f"{self.delegate}: run failed: {e}") from e
        return dict(zip(self._output_names, values, strict=True))

    def close(self) -> None:
        self._sess = None


class OrtBackend:
    """ONNX Runtime with one requested execution provider (CPU as the safety net)."""

    formats = frozenset({"onnx"})

    def __init__(
        self,
        provider: str = CPU_PROVIDER,
        provider_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.provider = provider
        self.provider_options = dict(provider_options or {})
        self.name = provider_short_name(provider)

    def __repr__(self) -> str:
        return f"OrtBackend({self.provider!r})"

    def probe(self) -> ProbeResult:
        try:
            import onnxruntime as ort
        except ImportError as e:
            return ProbeResult(self.name, False, f"onnxruntime is not installed ({e})")
        available = list(ort.get_available_providers())
        details = {"provider": self.provider, "ort_version": ort.__version__,
                   "ort_providers": available}
        if self.provider not in available:
            return ProbeResult(
                self.name,
                False,
                f"{self.provider} is not in this onnxruntime build "
                f"(has {', '.join(available)})",
                details,
            )
        return ProbeResult(self.name, True, "", details)

    def open(self, model_path: Path, options: Mapping[str, Any]) -> OrtSession:
        """Open ``model_path``; options: ``intra_op_threads`` (int, 0 = ORT default)."""
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise DelegateUnavailableError(
                "onnxruntime is not installed: pip install onnxruntime"
            ) from e
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = int(options.get("intra_op_threads", 0) or 0)
        if threads < 0:
            raise DelegateError(f"intra_op_threads must be >= 0, got {threads}")
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        providers: list[Any] = [(self.provider, self.provider_options)]
        if self.provider != CPU_PROVIDER:
            providers.append(CPU_PROVIDER)
        try:
            with warnings.catch_warnings():
                # ORT warns about a missing provider; we detect and record it ourselves.
                warnings.simplefilter("ignore", UserWarning)
                sess = ort.InferenceSession(
                    str(model_path), sess_options=so, providers=providers
                )
        except Exception as e:
            raise DelegateError(f"onnxruntime could not open {model_path.name}: {e}") from e
        session = OrtSession(sess, self.provider)
        if session.fallback:
            log.warning(
                "requested %s but onnxruntime runs %s on %s",
                self.provider, model_path.name, session.delegate,
            )
        return session
