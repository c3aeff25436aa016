"""The two model slots (``DIR/slots/a``, ``DIR/slots/b``) and the pointer ``current.json``.

The switch between slots is one atomic ``os.replace`` of ``current.json``. A slot is never
written while it is active.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from device_agent import faults
from device_agent.errors import SlotError
from device_agent.persist import atomic_write_json, read_json

__all__ = ["SLOT_NAMES", "SlotPointer", "Slots"]

SLOT_NAMES = ("a", "b")


@dataclass(frozen=True)
class SlotPointer:
    slot: str
    sha256: str
    name: str
    version: str

    def __post_init__(self) -> None:
        if self.slot not in SLOT_NAMES:
            raise SlotError(f"slot must be 'a' or 'b', not {self.slot!r}")

    @property
    def bundle(self) -> str:
        return f"{self.name}@{self.version}"


class Slots:
    def __init__(self, agent_dir: Path) -> None:
        self.root = Path(agent_dir) / "slots"
        self.pointer_path = self.root / "current.json"

    def path(self, slot: str) -> Path:
        if slot not in SLOT_NAMES:
            raise SlotError(f"no slot {slot!r}")
        return self.root / slot

    def current(self) -> SlotPointer | None:
        return self._read(self.pointer_path)

    def previous(self) -> SlotPointer | None:
        """The pointer saved just before the last switch (for an interrupted trial)."""
        return self._read(self.root / "previous.json")

    def remember_previous(self, pointer: SlotPointer | None) -> None:
        path = self.root / "previous.json"
        if pointer is None:
            path.unlink(missing_ok=True)
        else:
            atomic_write_json(path, asdict(pointer))

    def _read(self, path: Path) -> SlotPointer | None:
        try:
            d = read_json(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise SlotError(f"cannot read {path}: {e}") from e
        try:
            return SlotPointer(**d)
        except TypeError as e:
            raise SlotError(f"{path} is malformed: {e}") from e

    def inactive(self) -> str:
        cur = self.current()
        return "b" if cur is not None and cur.slot == "a" else "a"

    def clear(self, slot: str) -> Path:
        """Empty ``slot`` (refused if it is the active one) and return its path."""
        cur = self.current()
        if cur is not None and cur.slot == slot:
            raise SlotError(f"slot {slot} is active and must not be written")
        p = self.path(slot)
        if p.exists():
            shutil.rmtree(p)
        self.root.mkdir(parents=True, exist_ok=True)
        return p

    def switch(self, pointer: SlotPointer | None) -> None:
        """Point ``current.json`` at ``pointer`` (None removes it) atomically."""
        if pointer is None:
            self.pointer_path.unlink(missing_ok=True)
            return
        atomic_write_json(self.pointer_path, asdict(pointer))
        faults.kill_point("switch")
