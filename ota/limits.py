"""Bounds on everything read from the network, in one config object (both sides use it)."""

from __future__ import annotations

from dataclasses import dataclass

PROTOCOL_VERSION = 1
"""The ``"protocol"`` number every JSON payload carries."""

DEFAULT_CHUNK_SIZE = 256 * 1024
"""Chunk size the fleet server uses when it stages a bundle."""

MAX_FRAME_HEADER = 1024
"""Largest JSON header in a binary chunk frame (a frame is at most chunk_size + 1 KiB)."""

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True)
class ProtocolLimits:
    """Size bounds applied by every parser in ``ota`` before it looks inside a payload."""

    max_json_payload: int = 256 * KiB
    max_instruction_payload: int = 1 * MiB
    max_chunk_size: int = 1 * MiB
    max_window: int = 8
    max_bundle_size: int = 2 * GiB

    def __post_init__(self) -> None:
        for name in (
            "max_json_payload",
            "max_instruction_payload",
            "max_chunk_size",
            "max_window",
            "max_bundle_size",
        ):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"ProtocolLimits.{name} must be a positive int, got {value!r}")

    @property
    def max_chunk_frame(self) -> int:
        """Largest binary chunk frame: magic, header length, header, one chunk."""
        return 4 + 2 + MAX_FRAME_HEADER + self.max_chunk_size


DEFAULT_LIMITS = ProtocolLimits()
