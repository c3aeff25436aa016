"""From a finalized bundle file to a committed model, crash-safely.

verified -> staged -> trial -> committed, or failed / rolled_back. Each new state is
persisted in the journal before acting on it and reported through ``on_transition``.
The active slot is never written; ``current.json`` switches only after the health gate
passed (loads, golden vectors on the chosen delegate, smoke inference within the latency
budget), so a failed trial leaves the previous model serving. Loads run under the
crash-loop guard (``crashloop.py``).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from delegates.base import Backend, ProbeResult
from device_agent import bundle_access as ba
from device_agent import faults
from device_agent.crashloop import CrashLoopGuard
from device_agent.errors import InstallError
from device_agent.health import smoke_check
from device_agent.persist import atomic_write_bytes
from device_agent.runtime import ModelRuntime
from device_agent.slots import SlotPointer, Slots
from device_agent.state_store import StateStore
from model_bundles import keys as mb_keys
from model_bundles import verify as mb_verify
from ota.install import InstallState, Journal

__all__ = ["Installer", "file_sha256"]

log = logging.getLogger(__name__)
S = InstallState


def file_sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class Installer:
    def __init__(
        self,
        agent_dir: Path,
        *,
        store: StateStore,
        slots: Slots,
        preferred: Sequence[str] = ("cpu",),
        on_transition: Callable[[Journal], None] | None = None,
        backends: Sequence[Backend] | None = None,
        probes: Sequence[ProbeResult] | None = None,
        guard: CrashLoopGuard | None = None,
        latency_budget_ms: float | None = None,
    ) -> None:
        self.dir = Path(agent_dir)
        self.store = store
        self.slots = slots
        self.preferred = tuple(preferred)
        self.on_transition = on_transition or (lambda j: None)
        self.backends = backends
        self.probes = probes
        self.guard = guard or CrashLoopGuard(store.dir)
        self.latency_budget_ms = latency_budget_ms
        self.override: Any = None  # operator delegate override (device_agent.override_store)

    def _move(self, journal: Journal, new: InstallState, **changes: Any) -> Journal:
        j = journal.with_state(new, **changes)
        self.store.save_journal(j)
        try:
            self.on_transition(j)
        except Exception:  # a reporting failure must not break the install
            log.exception("on_transition callback failed")
        return j

    def install(
        self, bundle_path: Path, ref: Any, journal: Journal, *, hashed: bool = False
    ) -> tuple[Journal, ModelRuntime | None]:
        """Verify, stage, trial and commit ``bundle_path`` (``ref`` is the instruction's
        ``BundleRef``). Returns the final journal and the new runtime (None unless
        committed). Never raises for bad bundles: the journal says what happened.

        ``hashed``: the caller already checked the file's size and SHA-256 against ``ref``
        (``ChunkAssembler.finalize`` does, while the transfer ends). Then the bundle is read
        once more, by the verify-and-extract pass: two reads in all (ADR 0001)."""
        try:
            if journal.state is not S.VERIFIED:
                self._verify(bundle_path, ref, hashed=hashed)
                journal = self._move(journal, S.VERIFIED)
        except InstallError as e:
            bundle_path.unlink(missing_ok=True)
            return self._move(journal, S.FAILED, error=str(e)), None
        target = self.slots.inactive()
        current = self.slots.current()
        try:
            self._stage(bundle_path, ref, target)
        except (InstallError, OSError) as e:
            shutil.rmtree(self.slots.path(target), ignore_errors=True)
            return self._move(journal, S.FAILED, error=str(e)), None
        journal = self._move(
            journal, S.STAGED, target_slot=target,
            previous_slot=current.slot if current else None,
        )
        return self.trial(journal, ref)

    def trial(self, journal: Journal, ref: Any) -> tuple[Journal, ModelRuntime | None]:
        """Run the health gate on the staged slot; switch and commit, or roll back.

        Also resumes a trial interrupted by a crash (the journal is already ``trial``)."""
        target = journal.target_slot
        if target is None:
            raise RuntimeError("trial needs a staged target slot")
        previous = self.slots.current()
        if previous is not None and previous.slot == target:  # killed after the switch
            previous = self.slots.previous()
        if journal.state is not S.TRIAL:
            journal = self._move(journal, S.TRIAL)
        self.guard.begin(target, ref.sha256)
        try:
            faults.crash_on_load(ref.name, ref.version)
            runtime = ModelRuntime.load(
                self.slots.path(target), self.preferred,
                backends=self.backends, probes=self.probes, gate=True, override=self.override,
            )
        except Exception as e:
            self.guard.done()
            log.warning("trial of %s@%s failed: %s", ref.name, ref.version, e)
            self.slots.switch(previous)  # untouched, or restored
            return self._move(journal, S.ROLLED_BACK, error=str(e)), None
        self.guard.done()
        smoke = smoke_check(runtime, self.latency_budget_ms)
        if not smoke.passed:
            runtime.close()
            log.warning("trial of %s@%s failed: %s", ref.name, ref.version, smoke.detail)
            self.slots.switch(previous)
            return self._move(journal, S.ROLLED_BACK, error=smoke.detail), None
        self.slots.remember_previous(previous)
        self.slots.switch(SlotPointer(target, ref.sha256, ref.name, ref.version))
        journal = self._move(journal, S.COMMITTED, error=None)
        return journal, runtime

    def roll_back_interrupted_trial(
        self, journal: Journal, error: str = "interrupted during trial"
    ) -> Journal:
        """After crashes in ``trial``: point current.json back at the previous slot."""
        cur = self.slots.current()
        if cur is not None and cur.slot == journal.target_slot:
            self.slots.switch(self.slots.previous())
        self.guard.done()
        return self._move(journal, S.ROLLED_BACK, error=error)

    def roll_back_crash_loop(self, journal: Journal, crashes: int) -> Journal:
        """The active (committed) slot killed the agent ``crashes`` times while loading:
        switch to the previous slot (or to no model) and record why."""
        cur = self.slots.current()
        prev = self.slots.previous()
        back = prev if prev is not None and cur is not None and prev.slot != cur.slot else None
        self.slots.switch(back)
        self.slots.remember_previous(None)
        self.guard.done()
        name = cur.bundle if cur else "the active model"
        error = (f"crash loop: {name} killed the agent {crashes} times while loading; "
                 f"rolled back to {back.bundle if back else 'no model'}")
        log.error("%s", error)
        if journal.state is S.COMMITTED and journal.sha256 == (cur.sha256 if cur else None):
            return self._move(journal, S.ROLLED_BACK, error=error)
        j = journal.with_state(S.FAILED, error=error) if journal.state in (
            S.IDLE, S.COMMITTED, S.ROLLED_BACK) else journal
        self.store.save_journal(j)
        self.on_transition(j)
        return j

    # -- steps -----------------------------------------------------------------------

    def _verify(self, bundle_path: Path, ref: Any, *, hashed: bool) -> None:
        """Size, SHA-256 (unless ``hashed``), the publisher key the instruction pins, and
        the bundle's signature, manifest and member set (headers only)."""
        try:
            size = bundle_path.stat().st_size
            sha = None if hashed else file_sha256(bundle_path)[0]
        except OSError as e:
            raise InstallError(f"cannot read downloaded bundle: {e}") from e
        if size != ref.size:
            raise InstallError(f"bundle size {size} != instruction size {ref.size}")
        if sha is not None and sha != ref.sha256:
            raise InstallError(f"bundle sha256 {sha} != instruction sha256 {ref.sha256}")
        pub, kid = self._publisher(ref)
        try:
            mb_verify.verify_signed_manifest(bundle_path, {kid: pub})
        except Exception as e:
            raise InstallError(f"bundle verification failed: {e}") from e

    @staticmethod
    def _publisher(ref: Any) -> tuple[Any, str]:
        try:
            pub = mb_keys.load_public_key(ref.publisher_public_key.encode())
            kid = mb_keys.key_id(pub)
        except Exception as e:
            raise InstallError(f"instruction's publisher key is unusable: {e}") from e
        if kid != ref.publisher_key_id:
            raise InstallError(
                f"publisher key id {kid} != instruction key id {ref.publisher_key_id}"
            )
        return pub, kid

    def _stage(self, bundle_path: Path, ref: Any, target: str) -> None:
        """The one verify-and-extract pass into the inactive slot: file hashes and the
        whole file's SHA-256 are checked while the files are written."""
        slot_dir = self.slots.clear(target)
        slot_dir.mkdir(parents=True)
        pub, kid = self._publisher(ref)
        try:
            faults.raise_enospc_at("stage")
            vb = mb_verify.extract_verified(bundle_path, ba.files_dir(slot_dir), {kid: pub})
        except OSError as e:
            raise InstallError(f"extraction into slot {target} failed: {e}") from e
        except Exception as e:
            raise InstallError(f"bundle verification failed: {e}") from e
        if vb.sha256 != ref.sha256 or vb.size != ref.size or vb.key_id != kid:
            raise InstallError(f"bundle verification failed: sha256 {vb.sha256} != "
                               f"instruction sha256 {ref.sha256}")
        atomic_write_bytes(slot_dir / ba.MANIFEST_NAME, bytes(vb.manifest_bytes))
