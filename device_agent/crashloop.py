"""The crash-loop counter: ``DIR/state/loading.json`` names the slot being loaded.

Written (atomically) before a model is loaded and deleted once it loaded; a marker still
there at start means the previous run died while loading that slot, so its crash count
goes up by one. At ``limit`` crashes the agent rolls the slot back instead of loading it
again (docs/install-state-machine.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from device_agent.persist import atomic_write_json, read_json
from ota.install import CRASH_LOOP_LIMIT

__all__ = ["CrashLoopGuard", "LoadMarker"]


@dataclass(frozen=True)
class LoadMarker:
    slot: str
    sha256: str
    crashes: int = 0

    def __post_init__(self) -> None:
        if self.slot not in ("a", "b") or not isinstance(self.crashes, int) or self.crashes < 0:
            raise ValueError(f"bad load marker {self!r}")


class CrashLoopGuard:
    def __init__(self, state_dir: Path, limit: int = CRASH_LOOP_LIMIT) -> None:
        if limit < 1:
            raise ValueError("crash-loop limit must be >= 1")
        self.path = Path(state_dir) / "loading.json"
        self.limit = limit

    def read(self) -> LoadMarker | None:
        try:
            return LoadMarker(**read_json(self.path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            return None  # unreadable: treat as no crash (the load will write a new one)

    def count_crash_at_start(self) -> LoadMarker | None:
        """Call once at start: a leftover marker is one more crash, persisted."""
        m = self.read()
        if m is None:
            return None
        m = LoadMarker(m.slot, m.sha256, m.crashes + 1)
        atomic_write_json(self.path, asdict(m))
        return m

    def looping(self, slot: str, sha256: str) -> bool:
        m = self.read()
        return m is not None and (m.slot, m.sha256) == (slot, sha256) and m.crashes >= self.limit

    def crashes(self, slot: str, sha256: str) -> int:
        m = self.read()
        return m.crashes if m is not None and (m.slot, m.sha256) == (slot, sha256) else 0

    def begin(self, slot: str, sha256: str) -> None:
        """About to load ``slot``: persist the marker, keeping its count for the same slot."""
        atomic_write_json(self.path, asdict(LoadMarker(slot, sha256, self.crashes(slot, sha256))))

    def done(self) -> None:
        """The load returned (passed or failed cleanly): no crash to count."""
        self.path.unlink(missing_ok=True)
