"""Pure delegate selection: preferences and probe results in, an ordered plan out.

No I/O. Every preferred delegate that is not a candidate is listed in ``skipped`` with the
reason, so a fallback is always explicit and can be logged and reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from delegates.base import ProbeResult

__all__ = ["Selection", "Skipped", "select"]


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


@dataclass(frozen=True)
class Selection:
    """Candidates to try in order, and why each other preferred delegate was skipped."""

    candidates: tuple[str, ...]
    skipped: tuple[Skipped, ...]

    @property
    def first(self) -> str | None:
        return self.candidates[0] if self.candidates else None

    def skip_reason(self, name: str) -> str | None:
        for s in self.skipped:
            if s.name == name:
                return s.reason
        return None


def select(
    preferred: Sequence[str],
    probes: Sequence[ProbeResult],
    *,
    allowed: Sequence[str] | None = None,
) -> Selection:
    """Order the available preferred delegates; record why every other one is skipped.

    ``allowed`` (e.g. a bundle variant's ``delegates`` list) narrows the choice; ``None``
    allows all. Duplicates in ``preferred`` are ignored after the first.
    """
    by_name = {p.name: p for p in probes}
    allowed_set = None if allowed is None else set(allowed)
    candidates: list[str] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for name in preferred:
        if name in seen:
            continue
        seen.add(name)
        probe = by_name.get(name)
        if probe is None:
            skipped.append(Skipped(name, "unknown delegate (no backend of that name)"))
        elif not probe.available:
            skipped.append(Skipped(name, probe.reason))
        elif allowed_set is not None and name not in allowed_set:
            skipped.append(Skipped(name, f"not allowed by the variant ({sorted(allowed_set)})"))
        else:
            candidates.append(name)
    return Selection(tuple(candidates), tuple(skipped))
