"""Core ML through coremltools: real prediction on macOS, a clear probe elsewhere.

``coremltools`` installs on Linux, but ``MLModel.predict`` needs the macOS Core ML
framework; the probe therefore says "unavailable on this platform" anywhere but Darwin.
Bundles still validate ``.mlpackage`` variants structurally at build time
(``model_bundles.variant_formats.read_mlpackage``).
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from delegates.base import DelegateError, DelegateUnavailableError, ProbeResult

__all__ = ["CoreMlBackend"]


class CoreMlSession:
    def __init__(self, model: Any, compute_units: str) -> None:
        self._model = model
        self.requested = compute_units
        self.delegate = f"coreml:{compute_units}"
        self.fallback = False
        self.fallback_reason: str | None = None
        self.node_counts: dict[str, int] = {}
        self.providers: tuple[str, ...] = (compute_units,)
        spec = model.get_spec()
        self.input_names = tuple(i.name for i in spec.description.input)
        self.output_names = tuple(o.name for o in spec.description.output)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            out = self._model.predict(dict(feeds))
        except Exception as e:
            raise DelegateError(f"{self.delegate}: run failed: {e}") from e
        return {k: np.asarray(v) for k, v in out.items()}

    def close(self) -> None:
        self._model = None


class CoreMlBackend:
    formats = frozenset({"mlpackage"})

    def __init__(self, name: str = "coreml-native", compute_units: str = "ALL") -> None:
        self.name = name
        self.compute_units = compute_units

    def probe(self) -> ProbeResult:
        if platform.system() != "Darwin":
            return ProbeResult(self.name, False,
                               f"unavailable on this platform ({platform.system()}): "
                               "Core ML prediction needs macOS")
        try:
            import coremltools
        except ImportError as e:
            return ProbeResult(self.name, False, f"coremltools is not installed ({e})")
        return ProbeResult(self.name, True, "", {"coremltools": coremltools.__version__})

    def open(self, model_path: Path, options: Mapping[str, Any]) -> CoreMlSession:
        probe = self.probe()
        if not probe.available:
            raise DelegateUnavailableError(probe.reason)
        import coremltools as ct

        try:
            units = getattr(ct.ComputeUnit, self.compute_units)
            model = ct.models.MLModel(str(model_path), compute_units=units)
        except Exception as e:
            raise DelegateError(f"Core ML could not open {model_path.name}: {e}") from e
        return CoreMlSession(model, self.compute_units)
