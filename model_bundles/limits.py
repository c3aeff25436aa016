"""Size and count limits applied while reading a bundle (and checked while building one)."""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class BundleLimits:
    """Bounds on what a reader accepts. Tests use small values to exercise refusals."""

    max_bundle_bytes: int = 2 * GiB
    max_file_bytes: int = 2 * GiB
    max_members: int = 1024
    max_manifest_bytes: int = 1 * MiB
    #: bound on ``manifest.sig`` and on pax / GNU long-name extension headers
    max_header_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in (
            "max_bundle_bytes",
            "max_file_bytes",
            "max_members",
            "max_manifest_bytes",
            "max_header_bytes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BundleLimits.{name} must be a positive int, got {value!r}")


DEFAULT_LIMITS = BundleLimits()

CHUNK = 1 << 20
"""Bytes read at a time when a bundle or an extracted file is hashed."""

__all__ = ["DEFAULT_LIMITS", "BundleLimits", "GiB", "MiB"]
