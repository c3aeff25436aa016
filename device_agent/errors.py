"""The agent's error family."""

from __future__ import annotations

__all__ = [
    "AgentError",
    "ConfigError",
    "EnrolError",
    "InputTooLargeError",
    "InstallError",
    "NoModelError",
    "PredictError",
    "SlotError",
]


class AgentError(Exception):
    """Base of every error the device agent reports."""


class ConfigError(AgentError):
    """The agent directory is missing, unreadable or not enrolled."""


class EnrolError(AgentError):
    """Enrolment with the fleet server failed."""


class SlotError(AgentError):
    """A model slot is missing, does not match its manifest, or is active."""


class InstallError(AgentError):
    """A bundle could not be installed (verification, staging, trial)."""


class PredictError(AgentError):
    """The caller's inputs do not fit the model (maps to HTTP 400)."""


class InputTooLargeError(PredictError):
    """An input array is over its size bound, found before it is read (maps to HTTP 413)."""


class NoModelError(AgentError):
    """No model is active (maps to HTTP 503)."""
