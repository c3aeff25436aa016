"""One transfer of one bundle (the instruction's bundle or its shadow candidate): which
chunks are still missing, which were asked for, when the last one came. Pure: the shell
owns the bytes (``ota.chunks.ChunkAssembler`` checks each chunk against its signed hash
and writes it) and tells the transfer what arrived.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from ota.instructions import BundleRef

__all__ = ["REREQUEST_AFTER_S", "WINDOW", "Role", "Transfer"]

WINDOW = 8
"""Chunks asked for at once over MQTT."""
REREQUEST_AFTER_S = 5.0
"""A transfer with no progress for this long asks again (MQTT) or fetches again (HTTP)."""


class Role(StrEnum):
    BUNDLE = "bundle"  # the instruction's bundle: installed into the inactive A/B slot
    SHADOW = "shadow"  # the candidate: staged under DIR/shadow/, run beside the active one
    DELTA = "delta"  # a delta of the bundle (ota.delta): rebuilt into the bundle, then installed


@dataclass
class Transfer:
    role: Role
    ref: BundleRef
    missing: set[int]
    http: bool
    """Fetched over the HTTP range path (large bundles) instead of MQTT chunk requests."""
    last_progress: float = 0.0
    outstanding: set[int] = field(default_factory=set)

    @property
    def sha256(self) -> str:
        return self.ref.sha256

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def progress(self) -> float:
        total = len(self.ref.chunk_hashes)
        return 1.0 - len(self.missing) / total if total else 1.0

    def received(self, index: int, now: float) -> None:
        self.missing.discard(index)
        self.outstanding.discard(index)
        self.last_progress = now

    def reset_missing(self, missing: Iterable[int], now: float) -> None:
        self.missing = set(missing)
        self.outstanding &= self.missing
        self.last_progress = now

    def next_window(self, window: int = WINDOW) -> list[int]:
        """The first ``window`` missing chunks, now outstanding."""
        wanted = sorted(self.missing)[:window]
        self.outstanding = set(wanted)
        return wanted

    def stalled(self, now: float, after: float = REREQUEST_AFTER_S) -> bool:
        return bool(self.missing) and now - self.last_progress > after
