"""The backends this build knows, in a stable order, and a probe over all of them.

Only ONNX Runtime's CPU provider is a hard dependency. The accelerator providers are listed
so that ``device-agent delegates`` shows every one and why it is (not) usable here; a
backend for another runtime (LiteRT, Core ML) is added by appending a class implementing
``delegates.base.Backend`` to ``default_backends`` and importing its runtime lazily.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from delegates.base import Backend, ProbeResult
from delegates.coreml_backend import CoreMlBackend
from delegates.litert_backend import LiteRtBackend
from delegates.onnxruntime_backend import ort_backends

__all__ = ["ORT_PROVIDERS", "backends_by_name", "default_backends", "probe_all"]

# Preference order when nothing else is configured: accelerators first, CPU last.
ORT_PROVIDERS: tuple[str, ...] = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "CoreMLExecutionProvider",
    "QNNExecutionProvider",
    "NnapiExecutionProvider",
    "DmlExecutionProvider",
    "XnnpackExecutionProvider",
    "CPUExecutionProvider",
)


def default_backends(
    external: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Backend]:
    """Every backend this build can try: the ORT execution providers (accelerators first,
    CPU last), LiteRT with XNNPACK (``litert``) and without (``litert-ref``), Core ML.

    ``external`` adds LiteRT external delegates from the agent config:
    ``{"edgetpu": {"library": "/usr/lib/libedgetpu.so.1", "options": {...}}}``.
    """
    backends: list[Backend] = list(ort_backends())
    backends += [LiteRtBackend("litert", xnnpack=True), LiteRtBackend("litert-ref", xnnpack=False)]
    for name, entry in (external or {}).items():
        backends.append(LiteRtBackend(name, library=str(entry["library"]),
                                      library_options=entry.get("options") or {}))
    backends.append(CoreMlBackend())
    return backends


def backends_by_name(backends: list[Backend] | None = None) -> dict[str, Backend]:
    return {b.name: b for b in (backends if backends is not None else default_backends())}


def probe_all(backends: list[Backend] | None = None) -> list[ProbeResult]:
    """Probe each backend; a probe that raises is reported as unavailable, with why."""
    results: list[ProbeResult] = []
    for b in backends if backends is not None else default_backends():
        try:
            results.append(b.probe())
        except Exception as e:  # a broken optional runtime must not hide the others
            results.append(ProbeResult(b.name, False, f"probe failed: {e}"))
    return results
