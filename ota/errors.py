"""The ota error family: what a receiver reports when bytes from the network are bad.

Every error here is a domain error (hostile or corrupt input). Calling a state machine out
of order is a bug and raises ``RuntimeError`` instead (see ``ota.install``).
"""

from __future__ import annotations


class ProtocolError(Exception):
    """A payload, topic or frame that does not follow protocol 1."""


class InstructionError(ProtocolError):
    """A signed instruction envelope that must not be acted on."""


class InstructionSignatureError(InstructionError):
    """The envelope's signature does not verify with the fleet key (or names another key)."""


class ReplayError(InstructionError):
    """The instruction's ``seq`` is not greater than the last applied ``seq``."""


class ExpiredError(InstructionError):
    """The instruction's ``expires_at`` is not in the future."""


class WrongDeviceError(InstructionError):
    """The instruction is addressed to another device."""


class ChunkError(ProtocolError):
    """A chunk frame or chunk that is malformed, out of range, too long or fails its hash."""
