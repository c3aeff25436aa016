"""A device directory in the old layout (install facts in five files) is imported once
into the one device record, and the agent carries on from it."""

from __future__ import annotations

import json
from pathlib import Path

from device_agent.agent import Agent
from device_agent.state_store import LEGACY_FILES, StateStore
from ota.install import InstallState, Journal
from ota.updater.record import DeviceRecord, ShadowRecord

from .conftest import Rig

S = InstallState


def _write_old_layout(agent_dir: Path, record: DeviceRecord) -> None:
    """What an agent of the previous release left on disk for ``record``."""
    (agent_dir / "state" / "device.json").unlink()
    files = {
        "journal": record.journal.to_bytes(),
        "applied_seq": json.dumps({"applied_seq": record.applied_seq}).encode(),
        "bundle_ref": json.dumps(record.bundle.to_dict()).encode() if record.bundle else None,
        "delegate_override": json.dumps(record.delegate_override).encode(),
        "shadow": json.dumps({"ref": record.shadow.ref.to_dict(), "rate": record.shadow.rate,
                              "failed": record.shadow.failed}).encode()
        if record.shadow else None,
    }
    for key, data in files.items():
        if data is not None:
            path = agent_dir / LEGACY_FILES[key]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def test_old_layout_is_imported_once_and_the_old_files_are_removed(rig: Rig) -> None:
    _, cand = rig.build("2.0.0")
    committed = rig.agent.store.record
    old = committed.replace(shadow=ShadowRecord(cand, 0.25, "failed its gate"),
                            delegate_override={"delegate": "cpu"})
    rig.agent.shadow.stop()
    _write_old_layout(rig.agent_dir, old)

    agent = Agent(rig.agent_dir)
    assert agent.store.record == old
    assert (rig.agent_dir / "state" / "device.json").exists()
    assert not any((rig.agent_dir / rel).exists() for rel in LEGACY_FILES.values())
    assert DeviceRecord.from_bytes((rig.agent_dir / "state" / "device.json").read_bytes()) == old
    assert agent.installer.override is not None and agent.installer.override.delegate == "cpu"

    agent.recover()
    agent.load_current()
    assert agent.runtime is not None and agent.runtime.bundle == "sample@1.0.0"
    assert agent.journal.state is S.COMMITTED and agent.store.applied_seq == old.applied_seq
    assert agent.shadow.candidate is None  # the refused candidate stays refused
    agent._handle_desired(rig.instruction(None))  # the next instruction follows on
    assert agent.store.applied_seq == old.applied_seq + 1
    agent.stop()


def test_an_unreadable_old_journal_imports_as_a_reset_journal(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(parents=True)
    (state / "journal.json").write_bytes(b"{not json")
    (state / "applied_seq.json").write_bytes(b'{"applied_seq": 7}')
    record = StateStore(tmp_path).record
    assert record.applied_seq == 7 and record.journal.state is S.IDLE
    assert record.journal.error == "journal was unreadable and was reset"
    assert not (state / "journal.json").exists()


def test_a_crash_after_the_record_was_written_removes_the_leftovers(tmp_path: Path) -> None:
    """device.json written, the old files not yet removed: the record wins."""
    store = StateStore(tmp_path)
    j = Journal().with_state(S.FAILED, error="x")
    store.save(DeviceRecord(journal=j, applied_seq=3))
    (tmp_path / "state" / "applied_seq.json").write_bytes(b'{"applied_seq": 1}')
    again = StateStore(tmp_path)
    assert again.record.applied_seq == 3 and again.record.journal == j
    assert not (tmp_path / "state" / "applied_seq.json").exists()
