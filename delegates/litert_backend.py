"""LiteRT (TFLite) backends: the default CPU path with XNNPACK, the same without it, and
external delegates (GPU, Edge TPU, NNAPI, Hexagon) loaded from library paths.

The runtime is imported lazily: ``ai_edge_litert.interpreter`` first, then
``tflite_runtime.interpreter`` (its last release, 2.14, fails at ``Interpreter()`` under
numpy 2; the import still works, so the failure surfaces when a session is opened).
Proof of execution: the interpreter's op list shows a ``DELEGATE`` node for each graph
partition a delegate took; a requested delegate that took none is a reported fallback.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from delegates.base import DelegateError, DelegateUnavailableError, ProbeResult

__all__ = ["LiteRtBackend", "LiteRtSession", "import_interpreter"]


def import_interpreter() -> Any:
    """The interpreter module, or ``DelegateUnavailableError`` saying what to install."""
    try:
        from ai_edge_litert import interpreter
        return interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter
        return interpreter
    except ImportError as e:
        raise DelegateUnavailableError(
            "no LiteRT runtime: pip install ai-edge-litert (or tflite-runtime)"
        ) from e


class LiteRtSession:
    def __init__(self, interp: Any, requested: str, delegate: str) -> None:
        self._interp = interp
        self._lock = threading.Lock()  # an interpreter is not safe to run concurrently
        self.requested = requested
        self._in = interp.get_input_details()
        self._out = interp.get_output_details()
        ops = [str(o.get("op_name", "")) for o in interp._get_ops_details()]
        delegated = sum(1 for o in ops if o == "DELEGATE")
        self.node_counts: dict[str, int] = {"builtin": len(ops) - delegated}
        if delegated:
            self.node_counts[delegate] = delegated
        wants_delegate = delegate != "builtin"
        self.fallback = wants_delegate and delegated == 0
        self.fallback_reason = (
            f"{delegate} was requested but took no graph partition (ops: {', '.join(ops)})"
            if self.fallback else None)
        self.delegate = f"litert:{'builtin' if self.fallback else delegate}"
        self.providers: tuple[str, ...] = tuple(self.node_counts)
        self.input_names = tuple(d["name"] for d in self._in)
        self.output_names = tuple(d["name"] for d in self._out)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            return self._run(feeds)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            resized = False
            for d in self._in:
                arr = np.asarray(feeds[d["name"]], dtype=d["dtype"])
                if tuple(arr.shape) != tuple(d["shape"]):
                    self._interp.resize_tensor_input(d["index"], arr.shape)
                    resized = True
            if resized:
                self._interp.allocate_tensors()
                self._in = self._interp.get_input_details()
                self._out = self._interp.get_output_details()
            for d in self._in:
                self._interp.set_tensor(d["index"], np.asarray(feeds[d["name"]], d["dtype"]))
            self._interp.invoke()
            return {d["name"]: self._interp.get_tensor(d["index"]).copy() for d in self._out}
        except KeyError as e:
            raise DelegateError(f"{self.delegate}: missing input {e}") from e
        except Exception as e:  # the interpreter raises RuntimeError/ValueError
            raise DelegateError(f"{self.delegate}: run failed: {e}") from e

    def close(self) -> None:
        self._interp = None


class LiteRtBackend:
    """``xnnpack=True``: the default op resolver (XNNPACK applied); ``False``: builtin
    reference kernels only. ``library``: an external delegate loaded with
    ``load_delegate(library, library_options)``."""

    formats = frozenset({"tflite"})

    def __init__(self, name: str = "litert", *, xnnpack: bool = True,
                 library: str | None = None,
                 library_options: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.xnnpack = xnnpack
        self.library = library
        self.library_options = dict(library_options or {})

    def __repr__(self) -> str:
        return f"LiteRtBackend({self.name!r}, xnnpack={self.xnnpack}, library={self.library!r})"

    def probe(self) -> ProbeResult:
        try:
            mod = import_interpreter()
        except DelegateUnavailableError as e:
            return ProbeResult(self.name, False, str(e))
        details = {"module": mod.__name__, "xnnpack": self.xnnpack, "library": self.library}
        if self.library is not None and not Path(self.library).is_file():
            return ProbeResult(self.name, False, f"delegate library {self.library} not found",
                               details)
        return ProbeResult(self.name, True, "", details)

    def _load_delegate(self, mod: Any) -> Any:
        if self.library is None:
            raise RuntimeError("the LiteRT delegate is loaded only when a library is configured")
        if not Path(self.library).is_file():
            raise DelegateUnavailableError(f"{self.name}: delegate library {self.library} not found")
        try:
            return mod.load_delegate(self.library, self.library_options)
        except (ValueError, OSError, RuntimeError) as e:
            raise DelegateError(
                f"{self.name}: {self.library} is not a loadable TFLite delegate: {e}") from e

    def open(self, model_path: Path, options: Mapping[str, Any]) -> LiteRtSession:
        mod = import_interpreter()
        threads = int(options.get("intra_op_threads", 0) or 0) or None
        kwargs: dict[str, Any] = {"model_path": str(model_path), "num_threads": threads}
        if self.library is not None:
            kwargs["experimental_delegates"] = [self._load_delegate(mod)]
            label = self.name
        else:
            label = "xnnpack" if self.xnnpack else "builtin"
        if not self.xnnpack and hasattr(mod, "OpResolverType"):
            kwargs["experimental_op_resolver_type"] = (
                mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        try:
            interp = mod.Interpreter(**kwargs)
            interp.allocate_tensors()
        except Exception as e:
            raise DelegateError(f"LiteRT could not open {model_path.name} on {self.name}: {e}") from e
        return LiteRtSession(interp, label, label)
