"""The optional ``delta`` of a signed instruction (protocol 1, minor 1).

``{"delta": {"base_sha256", "sha256", "size", "chunk_size", "chunk_hashes"}}`` beside the
``bundle``: a delta file (``model_bundles.delta_format``, ``.efd``) that rebuilds the
instruction's bundle from the bundle ``base_sha256``. A device that holds that bundle as its
active model may fetch the delta (the same chunk transfer as a bundle, each chunk checked
against ``chunk_hashes``) instead of the bundle; the rebuilt bytes must be the bundle's
(``bundle.sha256`` and ``size``), else it fetches the bundle. Agents that predate it ignore
the key (unknown keys are ignored) and fetch the bundle (docs/mqtt-protocol.md, "Deltas").
"""

from __future__ import annotations

from typing import Any, ClassVar

from ota import payload as p
from ota.limits import ProtocolLimits
from ota.model import Model, PositiveCount, Sha256, validate

__all__ = ["PROTOCOL_MINOR", "DeltaRef"]

PROTOCOL_MINOR = 1
"""Protocol 1's minor version that added ``delta`` (documented, never sent: a minor only
adds optional keys, which older receivers ignore)."""


class DeltaRef(Model, frozen=True):
    """A delta file offered beside the instruction's bundle, with the hash of every chunk."""

    WHAT: ClassVar[str] = "delta"

    base_sha256: Sha256
    sha256: Sha256
    size: PositiveCount
    chunk_size: PositiveCount
    chunk_hashes: tuple[Sha256, ...]

    def check(self) -> None:
        expected = -(-self.size // self.chunk_size)
        if len(self.chunk_hashes) != expected:
            raise ValueError(
                f"delta.chunk_hashes has {len(self.chunk_hashes)} entries; size {self.size} "
                f"in chunks of {self.chunk_size} needs {expected}")

    def check_limits(self, limits: ProtocolLimits, bundle_size: int) -> None:
        p.require(self.size < bundle_size,
                  f"delta.size {self.size} is not smaller than the bundle's {bundle_size}")
        p.require(self.chunk_size <= limits.max_chunk_size,
                  f"delta.chunk_size {self.chunk_size} exceeds limit {limits.max_chunk_size}")

    def to_dict(self) -> dict[str, Any]:
        return {"base_sha256": self.base_sha256, "sha256": self.sha256, "size": self.size,
                "chunk_size": self.chunk_size, "chunk_hashes": list(self.chunk_hashes)}

    @classmethod
    def from_dict(cls, obj: dict[str, Any], what: str = "delta") -> DeltaRef:
        return validate(cls, obj, what)
