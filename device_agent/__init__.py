"""device_agent: installs, verifies and serves models on a device; reports to the fleet.

The in-process Python API for apps on the device::

    import device_agent

    prediction = device_agent.Agent("/var/lib/edgefleet").predict({"features": [[...]]})

``Agent`` is imported on first use (it pulls in ONNX Runtime and the MQTT client), so
``import device_agent`` stays cheap for the CLI and for code that only needs the version.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the idiom)
__version__ = "0.1.0"
__all__ = ["Agent", "Prediction", "__version__"]

if TYPE_CHECKING:
    from device_agent.agent import Agent
    from device_agent.runtime import Prediction

_LAZY = {"Agent": "device_agent.agent", "Prediction": "device_agent.runtime"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
