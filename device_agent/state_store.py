"""Small persisted agent state in ``DIR/state/``: install journal, applied seq, message seq."""

from __future__ import annotations

import threading
from pathlib import Path

from device_agent import faults
from device_agent.persist import atomic_write_bytes, atomic_write_json, read_json
from ota.errors import ProtocolError
from ota.install import Journal

__all__ = ["StateStore"]


class StateStore:
    def __init__(self, agent_dir: Path) -> None:
        self.dir = Path(agent_dir) / "state"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.journal_path = self.dir / "journal.json"
        self.applied_path = self.dir / "applied_seq.json"
        self.seq_path = self.dir / "message_seq.json"
        self._lock = threading.Lock()
        self._msg_seq = self._read_int(self.seq_path, "seq")

    @staticmethod
    def _read_int(path: Path, key: str) -> int:
        try:
            v = read_json(path).get(key, 0)
        except (FileNotFoundError, ValueError, AttributeError):
            return 0
        return v if isinstance(v, int) and v >= 0 else 0

    def load_journal(self) -> Journal:
        try:
            return Journal.from_bytes(self.journal_path.read_bytes())
        except FileNotFoundError:
            return Journal()
        except ProtocolError:
            # An unreadable journal: start idle and serve current.json (logged by caller).
            return Journal(error="journal was unreadable and was reset")

    def save_journal(self, journal: Journal) -> None:
        atomic_write_bytes(self.journal_path, journal.to_bytes())
        faults.kill_point(f"state:{journal.state.value}")

    @property
    def applied_seq(self) -> int:
        return self._read_int(self.applied_path, "applied_seq")

    def set_applied_seq(self, seq: int) -> None:
        atomic_write_json(self.applied_path, {"applied_seq": int(seq)})

    def next_message_seq(self) -> int:
        """A per-device increasing number for telemetry and events, persisted."""
        with self._lock:
            self._msg_seq += 1
            atomic_write_json(self.seq_path, {"seq": self._msg_seq})
            return self._msg_seq
