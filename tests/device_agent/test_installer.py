"""The installer on real signed bundles, real ONNX Runtime and real files: commit, health
gate rollback, tampering, disk full, crash-loop rollback. Each asserts the outcome and
what is left on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from delegates.base import ProbeResult
from delegates.onnxruntime_backend import OrtBackend
from device_agent.crashloop import CrashLoopGuard
from device_agent.installer import Installer
from device_agent.runtime import ModelRuntime
from device_agent.slots import Slots
from device_agent.state_store import StateStore
from ota.install import CRASH_LOOP_LIMIT, InstallState, Journal, ResumeAction, resume_action

from .installer_helpers import bundle_ref, publisher, signed_bundle

S = InstallState
X = {"features": np.ones((1, 16), dtype=np.float32)}


def _tree(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _offered(ref: Any, seq: int) -> Journal:
    j = Journal().with_state(S.OFFERED, instruction_seq=seq, sha256=ref.sha256,
                             name=ref.name, version=ref.version)
    return j.with_state(S.DOWNLOADING)


class Device:
    """An agent directory with an installer that records every transition."""

    def __init__(self, root: Path, **kw: Any) -> None:
        self.root = root
        self.store = StateStore(root)
        self.slots = Slots(root)
        self.states: list[str] = []
        self.installer = Installer(root, store=self.store, slots=self.slots, preferred=("cpu",),
                                   on_transition=lambda j: self.states.append(j.state.value),
                                   **kw)
        self.journal = Journal()
        self.seq = 0

    def install(self, bundle: Path, tmp: Path) -> tuple[Journal, ModelRuntime | None]:
        self.seq += 1
        ref = bundle_ref(bundle, publisher(tmp))
        self.journal, rt = self.installer.install(bundle, ref, _offered(ref, self.seq))
        return self.journal, rt

    def serving(self) -> ModelRuntime:
        cur = self.slots.current()
        assert cur is not None
        return ModelRuntime.load(self.slots.path(cur.slot), ("cpu",), gate=True)


def test_install_commits_a_signed_bundle_into_the_inactive_slot(tmp_path: Path,
                                                                  sample_onnx: Path) -> None:
    dev = Device(tmp_path / "dev")
    journal, rt = dev.install(signed_bundle(tmp_path, sample_onnx), tmp_path)
    assert journal.state is S.COMMITTED and journal.error is None
    assert dev.states == ["verified", "staged", "trial", "committed"]
    assert rt is not None and rt.bundle == "sample@1.0.0"
    assert rt.predict(X).outputs["scores"].shape == (1, 4)
    cur = dev.slots.current()
    assert cur is not None and cur.slot == "a" and cur.sha256 == journal.sha256
    assert dev.store.load_journal() == journal
    assert not (tmp_path / "dev" / "state" / "loading.json").exists()
    rt.close()


class _NumericsBugBackend(OrtBackend):
    """An accelerator whose kernels are wrong: real ORT CPU with every float output off."""

    name = "cpu"

    def open(self, model_path: Path, options: Any) -> Any:
        return _OffByHalf(super().open(model_path, options))


class _OffByHalf:
    def __init__(self, session: Any) -> None:
        self._s = session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s, name)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v + 0.5 if v.dtype.kind == "f" else v for k, v in self._s.run(feeds).items()}


def test_bundle_failing_golden_vectors_on_the_delegate_is_rolled_back_and_old_keeps_serving(
        tmp_path: Path, sample_onnx: Path) -> None:
    dev = Device(tmp_path / "dev")
    dev.install(signed_bundle(tmp_path, sample_onnx, version="1.0.0"), tmp_path)[1].close()
    before = _tree(dev.slots.path("a"))
    buggy = _NumericsBugBackend("CPUExecutionProvider")
    dev.installer.backends = [buggy]
    dev.installer.probes = [ProbeResult("cpu", True, "fake accelerator with a numerics bug")]
    journal, rt = dev.install(signed_bundle(tmp_path, sample_onnx, version="2.0.0"), tmp_path)
    assert rt is None
    assert journal.state is S.ROLLED_BACK and "golden" in (journal.error or "")
    assert dev.states[-2:] == ["trial", "rolled_back"]
    cur = dev.slots.current()
    assert cur is not None and (cur.slot, cur.version) == ("a", "1.0.0")
    assert _tree(dev.slots.path("a")) == before
    serving = dev.serving()
    assert serving.bundle == "sample@1.0.0" and serving.predict(X).outputs["label"].shape == (1,)
    serving.close()


def test_bundle_over_its_latency_budget_is_rolled_back_and_old_keeps_serving(
        tmp_path: Path, sample_onnx: Path) -> None:
    dev = Device(tmp_path / "dev")
    dev.install(signed_bundle(tmp_path, sample_onnx, version="1.0.0"), tmp_path)[1].close()
    slow = signed_bundle(tmp_path, sample_onnx, version="2.0.0", latency_budget_ms=1e-6)
    journal, rt = dev.install(slow, tmp_path)
    assert rt is None and journal.state is S.ROLLED_BACK
    assert "over the budget of 1e-06 ms" in (journal.error or "")
    cur = dev.slots.current()
    assert cur is not None and cur.version == "1.0.0"


@pytest.mark.parametrize("tamper", ["byte_flipped_after_signing", "hash_not_in_instruction"])
def test_tampered_bundle_is_refused_and_active_slot_is_unchanged(
        tmp_path: Path, sample_onnx: Path, tamper: str) -> None:
    dev = Device(tmp_path / "dev")
    dev.install(signed_bundle(tmp_path, sample_onnx, version="1.0.0"), tmp_path)[1].close()
    pointer = (dev.slots.root / "current.json").read_bytes()
    before = _tree(dev.slots.root)
    bad = signed_bundle(tmp_path, sample_onnx, version="2.0.0")
    ref = bundle_ref(bad, publisher(tmp_path))
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    if tamper == "byte_flipped_after_signing":  # the instruction hashes the tampered bytes
        ref = bundle_ref(bad, publisher(tmp_path))
    journal, rt = dev.installer.install(bad, ref, _offered(ref, 9))
    assert rt is None and journal.state is S.FAILED
    assert ("sha256" in journal.error) if tamper == "hash_not_in_instruction" else journal.error
    # The whole-file hash and the signature are checked before "verified"; a member that
    # does not match its signed hash is caught by the one verify-and-extract pass, before
    # anything is staged or switched.
    assert dev.states[4:] == (["failed"] if tamper == "hash_not_in_instruction"
                              else ["verified", "failed"])
    assert (dev.slots.root / "current.json").read_bytes() == pointer
    assert {k: v for k, v in _tree(dev.slots.root).items() if k.startswith("a/")} == {
        k: v for k, v in before.items() if k.startswith("a/")}
    assert not (dev.slots.root / "b" / "files").exists()


def test_disk_full_during_staging_fails_cleanly_and_old_keeps_serving(
        tmp_path: Path, sample_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dev = Device(tmp_path / "dev")
    dev.install(signed_bundle(tmp_path, sample_onnx, version="1.0.0"), tmp_path)[1].close()
    before = _tree(dev.slots.root)
    monkeypatch.setenv("EDGEFLEET_TEST_ENOSPC_AT", "stage")
    journal, rt = dev.install(signed_bundle(tmp_path, sample_onnx, version="2.0.0"), tmp_path)
    assert rt is None and journal.state is S.FAILED
    assert "No space left on device" in (journal.error or "")
    assert _tree(dev.slots.root) == before  # slot b removed again, a and the pointer intact
    assert dev.serving().bundle == "sample@1.0.0"


def test_a_trial_killed_once_is_retried_and_one_that_keeps_crashing_is_rolled_back() -> None:
    trial = Journal(state=S.TRIAL, target_slot="b", sha256="0" * 64)
    assert resume_action(trial, load_crashes=0) is ResumeAction.TRIAL
    assert resume_action(trial, load_crashes=CRASH_LOOP_LIMIT - 1) is ResumeAction.TRIAL
    assert resume_action(trial, load_crashes=CRASH_LOOP_LIMIT) is ResumeAction.ROLL_BACK


def test_committed_model_that_crash_loops_the_agent_is_rolled_back_to_the_previous_slot(
        tmp_path: Path, sample_onnx: Path) -> None:
    dev = Device(tmp_path / "dev")
    dev.install(signed_bundle(tmp_path, sample_onnx, version="1.0.0"), tmp_path)[1].close()
    journal, rt = dev.install(signed_bundle(tmp_path, sample_onnx, version="2.0.0"), tmp_path)
    assert rt is not None and journal.state is S.COMMITTED
    rt.close()
    cur = dev.slots.current()
    assert cur is not None and cur.slot == "b"
    guard = CrashLoopGuard(dev.store.dir)
    for _ in range(CRASH_LOOP_LIMIT):  # each run dies while loading slot b
        guard.begin(cur.slot, cur.sha256)
        guard.count_crash_at_start()
    assert guard.looping(cur.slot, cur.sha256)
    journal = dev.installer.roll_back_crash_loop(journal, guard.crashes(cur.slot, cur.sha256))
    assert journal.state is S.ROLLED_BACK and "crash loop" in (journal.error or "")
    back = dev.slots.current()
    assert back is not None and (back.slot, back.version) == ("a", "1.0.0")
    assert guard.read() is None and dev.store.load_journal() == journal
    assert dev.serving().bundle == "sample@1.0.0"
