"""The persisted device record and the message counter, in ``DIR/state/``.

``device.json`` is the one file of install facts (``ota.updater.record.DeviceRecord``:
journal, applied seq, the bundle under install, the shadow candidate, the delegate
override), replaced atomically as a whole. ``message_seq.json`` numbers telemetry and
events. A directory in the old layout (five files) is imported once: ``device.json`` is
written first, then the old files are removed, so a crash in between imports them again
from the same bytes or finds the record already there.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from device_agent import faults
from device_agent.persist import atomic_write_bytes, atomic_write_json, read_json
from ota.errors import ProtocolError
from ota.install import Journal
from ota.updater.record import DeviceRecord, from_legacy

__all__ = ["LEGACY_FILES", "StateStore"]

log = logging.getLogger(__name__)

LEGACY_FILES = {
    "journal": "state/journal.json",
    "applied_seq": "state/applied_seq.json",
    "bundle_ref": "state/bundle_ref.json",
    "delegate_override": "state/delegate_override.json",
    "shadow": "shadow/shadow.json",
}
"""Where the install facts lived before ``device.json`` (imported once, then removed)."""


class StateStore:
    def __init__(self, agent_dir: Path) -> None:
        self.agent_dir = Path(agent_dir)
        self.dir = self.agent_dir / "state"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.record_path = self.dir / "device.json"
        self.seq_path = self.dir / "message_seq.json"
        self.state_seq_path = self.dir / "state_seq.json"  # signed DeviceState's own sequence
        self._lock = threading.Lock()
        self._msg_seq = self._read_int(self.seq_path, "seq")
        self._state_seq = self._read_int(self.state_seq_path, "seq")
        self.record = self._load()

    @staticmethod
    def _read_int(path: Path, key: str) -> int:
        try:
            v = read_json(path).get(key, 0)
        except (FileNotFoundError, ValueError, AttributeError):
            return 0
        return v if isinstance(v, int) and v >= 0 else 0

    # -- the device record ---------------------------------------------------------------------

    def _load(self) -> DeviceRecord:
        try:
            record = DeviceRecord.from_bytes(self.record_path.read_bytes())
        except FileNotFoundError:
            record = self._import_legacy()
        except ProtocolError as e:
            # An unreadable record: start idle and serve current.json.
            log.error("device record %s is unreadable (%s); starting afresh",
                      self.record_path, e)
            return DeviceRecord(journal=Journal(error="device record was unreadable and was "
                                                      "reset"))
        self._remove_legacy()
        return record

    def _import_legacy(self) -> DeviceRecord:
        found = {k: self._read_legacy(rel) for k, rel in LEGACY_FILES.items()}
        if all(v is None for v in found.values()):
            return DeviceRecord()
        record = from_legacy(**found)
        atomic_write_bytes(self.record_path, record.to_bytes())
        log.info("imported the install state of the old layout into %s", self.record_path)
        return record

    def _read_legacy(self, rel: str) -> bytes | None:
        try:
            return (self.agent_dir / rel).read_bytes()
        except FileNotFoundError:
            return None

    def _remove_legacy(self) -> None:
        for rel in LEGACY_FILES.values():
            (self.agent_dir / rel).unlink(missing_ok=True)

    def save(self, record: DeviceRecord) -> None:
        """Replace ``device.json`` atomically (kill point ``state:<s>`` after a journal
        transition was persisted)."""
        moved = record.journal.state is not self.record.journal.state or (
            record.journal.updated_at != self.record.journal.updated_at)
        atomic_write_bytes(self.record_path, record.to_bytes())
        self.record = record
        if moved:
            faults.kill_point(f"state:{record.journal.state.value}")

    def load_journal(self) -> Journal:
        return self.record.journal

    def save_journal(self, journal: Journal) -> None:
        self.save(self.record.replace(journal=journal))

    @property
    def applied_seq(self) -> int:
        return self.record.applied_seq

    def set_applied_seq(self, seq: int) -> None:
        self.save(self.record.replace(applied_seq=int(seq)))

    def next_message_seq(self) -> int:
        """A per-device increasing number for telemetry and events, persisted."""
        with self._lock:
            self._msg_seq += 1
            atomic_write_json(self.seq_path, {"seq": self._msg_seq})
            return self._msg_seq

    def next_state_seq(self) -> int:
        """A per-device increasing number for signed ``DeviceState``s (kept apart from the
        report sequence, whose every number the server stores), persisted."""
        with self._lock:
            self._state_seq += 1
            atomic_write_json(self.state_seq_path, {"seq": self._state_seq})
            return self._state_seq
