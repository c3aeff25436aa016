"""The shell of the update core: executes what ``ota.updater.UpdaterCore`` asks for.

``UpdateShell`` is the part of ``Agent`` that does the update path's I/O: the part files
(``ota.chunks.ChunkAssembler``), the TUF trust check, chunk requests over MQTT, the HTTP
range path, the installer and the shadow stager, the device record. Every method runs on
the agent's worker thread (``recover`` before it starts); the paho thread and the ticker
only queue events for it (docs/install-state-machine.md, "Pure core and thin shell").
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from device_agent import faults
from device_agent.installer import Installer
from device_agent.override_store import as_override
from device_agent.serving import ServingHolder
from device_agent.shadow_install import ShadowStager
from device_agent.slots import Slots
from device_agent.state_store import StateStore
from device_agent.trust_store import TrustGate
from ota import chunks as ota_chunks
from ota.install import IN_PROGRESS, InstallState, Journal, ResumeAction, resume_action
from ota.instructions import BundleRef
from ota.limits import DEFAULT_LIMITS
from ota.messages import ChunkRequest
from ota.trust import TrustUnavailableError
from ota.updater import core as uc
from ota.updater.transfer import Role

__all__ = ["UpdateShell"]

log = logging.getLogger(__name__)
S = InstallState


class UpdateShell:
    """Mixed into ``Agent``; uses the agent's store, slots, installer, stager, trust gate,
    link and reporting."""

    core: uc.UpdaterCore
    store: StateStore
    slots: Slots
    installer: Installer
    shadow_stager: ShadowStager
    trust: TrustGate
    serving: ServingHolder
    guard: Any
    config: Any
    topics: Any
    link: Any
    dir: Path
    _assemblers: dict[Role, ota_chunks.ChunkAssembler]
    _recovering: bool
    _instructions_waiting: int
    _stop: Any

    def _event(self, kind: str, **fields: Any) -> None: ...
    def _reject(self) -> None: ...
    def publish_state(self) -> None: ...
    def _on_transition(self, j: Journal) -> None: ...
    def _set_runtime(self, rt: Any) -> None: ...
    def load_current(self) -> None: ...
    # declared for the mixin; the agent defines it
    def _queue(self, kind: str, payload: Any = None) -> bool: ...  # type: ignore[empty-body]

    # -- after a restart -----------------------------------------------------------------------

    def recover(self) -> None:
        """Finish or undo what a crash interrupted (install-state-machine.md)."""
        self._recovering = True
        try:
            self._recover()
        finally:
            self._recovering = False

    def _recover(self) -> None:
        marker = self.guard.count_crash_at_start()
        j = self.journal
        crashes = marker.crashes if marker is not None and (marker.slot, marker.sha256) == (
            j.target_slot, j.sha256) else 0
        action = resume_action(j, load_crashes=crashes)
        ref = self.store.record.bundle
        if ref is not None and ref.sha256 != j.sha256:
            ref = None
        if action is ResumeAction.ROLL_BACK or (action is ResumeAction.TRIAL and ref is None):
            why = (f"crash loop: {j.name}@{j.version} killed the agent {crashes} times "
                   "while loading" if crashes else "interrupted during trial")
            self.journal = self.installer.roll_back_interrupted_trial(j, error=why)
        elif action is ResumeAction.TRIAL and ref is not None:
            self.journal, rt = self.installer.trial(self.journal, ref)
            if rt is not None:
                rt.close()
        elif action is ResumeAction.STAGE and ref is not None:
            self._install_file(self._bundle_path(Role.BUNDLE, ref), ref)
        elif action in (ResumeAction.START_DOWNLOAD, ResumeAction.RESUME_DOWNLOAD) and ref:
            if self.journal.state is S.OFFERED:
                self._move(S.DOWNLOADING)
            self._run(self.core.resume(Role.BUNDLE, ref))  # or install a finalized file
        elif action in (ResumeAction.START_DOWNLOAD, ResumeAction.RESUME_DOWNLOAD,
                        ResumeAction.STAGE):
            self._move(S.FAILED, error="install record lost; waiting for a new instruction")
        if self.journal.state not in IN_PROGRESS:
            self._clean_downloads()
        self._restore_shadow()

    def _restore_shadow(self) -> None:
        """Resume the shadow candidate (or its transfer) the record names."""
        rec = self.store.record.shadow
        if rec is None or rec.failed:
            return  # refused before; a new instruction may name another candidate
        if self.shadow_stager.is_staged(rec.ref):
            error = self.shadow_stager.load(rec.ref, rec.rate, rec.pace)
            if error is not None:
                self._run(self.core.shadow_refused(error))
        else:
            self._run(self.core.resume(Role.SHADOW, rec.ref))

    # -- events from the worker's queue ------------------------------------------------------

    def _handle_desired(self, envelope: bytes) -> None:
        self._run(self.core.on_instruction(envelope, now=time.time(),
                                           active_sha=self._active_sha()))

    def _handle_chunk(self, payload: bytes) -> None:
        header, data = ota_chunks.decode_chunk_frame(payload, DEFAULT_LIMITS.max_chunk_size)
        t = self.core.transfer_for(header.sha256)
        asm = self._assemblers.get(t.role) if t is not None else None
        if t is None or asm is None:
            return  # a late chunk of a finished or cancelled transfer
        try:
            asm.accept(header.index, data)  # length and signed hash checked before written
        except Exception as e:
            if t.role is not Role.DELTA:
                raise
            self._run(self.core.on_delta_failed(f"chunk {header.index}: {e}"))
            return
        self._chunk_written(header.index)
        self._run(self.core.on_chunk(t.role, header.index, now=time.time()))

    def _chunk_written(self, index: int) -> None:
        faults.kill_point(f"chunk:{index}")
        faults.chunk_delay()

    def _active_sha(self) -> str | None:
        cur = self.slots.current()
        return cur.sha256 if cur is not None else None

    # -- the shell: execute the core's actions ------------------------------------------------

    def _run(self, actions: list[uc.Action]) -> None:
        for a in actions:
            self._execute(a)

    def _execute(self, a: uc.Action) -> None:  # noqa: C901 - one branch per action
        if isinstance(a, uc.Persist):
            before = self.store.record.journal
            self.store.save(a.record)
            if a.record.journal != before:
                self._on_transition(a.record.journal)
        elif isinstance(a, uc.Refuse):
            self._reject()
            self._event("error", detail=a.detail)
        elif isinstance(a, uc.Report):
            self._event("error", detail=a.detail)
        elif isinstance(a, uc.CheckTrust):
            self._check_trust(a)
        elif isinstance(a, uc.OpenTransfer):
            self._open_transfer(a)
        elif isinstance(a, uc.RequestChunks):
            self._request_chunks(a)
        elif isinstance(a, uc.FetchRanges):
            if not self._recovering:  # recover() only reopens the part file; the first
                self._fetch_http(a.role, a.sha256)  # tick or connect fetches
        elif isinstance(a, uc.Finish):
            self._finish(a.role, a.ref)
        elif isinstance(a, uc.CancelTransfer):
            asm = self._assemblers.pop(a.role, None)
            if asm is not None:
                asm.discard()
            if a.role is Role.BUNDLE:
                self._clean_downloads()
        elif isinstance(a, uc.StopShadow):
            self._assemblers.pop(Role.SHADOW, None)
            self.shadow_stager.clear()
        elif isinstance(a, uc.ShadowRate):
            self.shadow_stager.set_rate(a.rate, a.pace)
        elif isinstance(a, uc.OverrideChanged):
            self.installer.override = as_override(self.store.record.delegate_override)
            if a.reload and self.serving.current is not None:
                self.load_current()  # a changed override re-selects the delegate
        elif isinstance(a, uc.PublishState):
            self.publish_state()

    def _check_trust(self, a: uc.CheckTrust) -> None:
        """TUF: every bundle the instruction names (its bundle and its shadow candidate) is
        a trusted target (trust_store). A transient failure is retried by the core."""
        error, transient = None, False
        try:
            self.trust.check(*a.refs)
        except TrustUnavailableError as e:
            error, transient = str(e), True
        except Exception as e:
            error = str(e)
        self._run(self.core.on_trust(a.seq, error=error, transient=transient,
                                     now=time.time(), active_sha=self._active_sha()))

    def _part_path(self, role: Role, ref: BundleRef) -> Path:
        if role is Role.SHADOW:
            return self.shadow_stager.part_path(ref.sha256)
        return self.dir / "downloads" / f"{ref.sha256}.part"

    def _bundle_path(self, role: Role, ref: BundleRef) -> Path:
        return self._part_path(role, ref).with_suffix(".efd" if role is Role.DELTA else ".efb")

    def _open_transfer(self, a: uc.OpenTransfer) -> None:
        self._assemblers.pop(a.role, None)
        if a.need_bytes:
            free = faults.free_bytes(self.dir)
            if free < a.need_bytes:
                self._run(self.core.on_transfer_failed(
                    a.role, f"not enough disk space: the {a.role.value} transfer needs "
                            f"{a.need_bytes} bytes free, {free} are"))
                return
        if self._bundle_path(a.role, a.ref).exists():  # killed between finalize and install
            self._run([uc.Finish(a.role, a.ref)])
            return
        asm = ota_chunks.ChunkAssembler(
            self._part_path(a.role, a.ref), sha256=a.ref.sha256, size=a.ref.size,
            chunk_size=a.ref.chunk_size, chunk_hashes=a.ref.chunk_hashes)
        self._assemblers[a.role] = asm
        self._run(self.core.on_opened(a.role, a.ref, set(asm.missing()), now=time.time()))

    def _request_chunks(self, a: uc.RequestChunks) -> None:
        if self.link is None:
            return
        for index, count in a.ranges:
            req = ChunkRequest(device_id=self.config.device_id, sha256=a.sha256,
                               index=index, count=count)
            self.link.publish_now(self.topics.chunk_request, req.to_bytes())

    def _fetch_http(self, role: Role, sha256: str) -> None:
        """The range path for large bundles (docs/mqtt-protocol.md, "HTTP range path").

        Runs on the worker, so it yields between chunks whenever an instruction is waiting
        in the queue (a cancel or a superseding bundle) or the agent stops; the fetch is
        picked up again by the ``rerequest`` queued behind that instruction."""
        from device_agent.http_fetch import fetch_missing
        from device_agent.server_tls import http_verify

        asm = self._assemblers.get(role)
        if asm is None:
            return
        base = self.config.server_url.rstrip('/')
        url = (f"{base}/api/v1/bundles/by-hash/{sha256}.efd" if role is Role.DELTA
               else f"{base}/api/v1/bundles/{sha256}/download")
        error = None
        try:
            fetch_missing(asm, url, device_id=self.config.device_id,
                          secret=self.config.mqtt_password, on_chunk=self._chunk_written,
                          should_stop=self._http_should_yield,
                          verify=http_verify(self.dir))
        except Exception as e:  # fetched again by the tick after REREQUEST_AFTER_S
            log.warning("HTTP range download failed: %s", e)
            if role is Role.DELTA:  # a delta is not retried: the bundle is fetched
                self._run(self.core.on_delta_failed(f"http download: {e}"))
                return
            error = str(e)
        missing = set(asm.missing())
        self._run(self.core.on_fetched(role, sha256, missing, now=time.time(),
                                       error=error))
        if missing and error is None and not self._stop.is_set():
            self._queue("rerequest")  # after the waiting instruction

    def _http_should_yield(self) -> bool:
        return self._stop.is_set() or self._instructions_waiting > 0

    def _finish(self, role: Role, ref: BundleRef) -> None:
        asm = self._assemblers.pop(role, None)
        path = self._bundle_path(role, ref)
        if asm is not None:
            try:
                asm.finalize(path)  # size and whole-file SHA-256 (the first read)
            except Exception as e:
                self._run(self.core.on_transfer_failed(role, f"{role.value} transfer: {e}"))
                return
        if role is Role.DELTA:
            self._install_from_delta(path)
            return
        if role is Role.SHADOW:
            rec = self.store.record.shadow
            error = self.shadow_stager.stage_file(path, ref, rec.rate if rec else 0.0,
                                                  rec.pace if rec else None)
            if error is not None:
                self._run(self.core.shadow_refused(error))
            return
        self._install_file(path, ref)

    def _install_from_delta(self, delta_file: Path) -> None:
        """Rebuild the bundle from the fetched delta, then install it; on any failure fall
        back to the full bundle (docs/install-state-machine.md, "Deltas")."""
        from device_agent.delta_install import rebuild_bundle

        rec = self.store.record
        if rec.bundle is None or rec.delta is None:
            delta_file.unlink(missing_ok=True)
            return
        out = self._bundle_path(Role.BUNDLE, rec.bundle)
        try:
            detail = rebuild_bundle(delta_file, delta=rec.delta, ref=rec.bundle,
                                    slots=self.slots, fleet_key=self.core.fleet_key, out=out)
        except Exception as e:
            delta_file.unlink(missing_ok=True)
            self._run(self.core.on_delta_failed(str(e)))
            return
        self._run(self.core.on_delta_rebuilt())
        delta_file.unlink(missing_ok=True)
        self._event("agent", detail=detail)
        self._install_file(out, rec.bundle)

    def _install_file(self, path: Path, ref: BundleRef) -> None:
        _, rt = self.installer.install(path, ref, self.journal, hashed=True)
        path.unlink(missing_ok=True)
        self.core.record = self.store.record
        if rt is not None:
            self._set_runtime(rt)
        self.publish_state()

    def _clean_downloads(self) -> None:
        """No install under way: whatever is in ``downloads/`` is left over from a crash."""
        keep = self._assemblers.get(Role.BUNDLE)
        for path in (self.dir / "downloads").glob("*"):
            if keep is None or path.name.split(".")[0] != keep.sha256:
                path.unlink(missing_ok=True)

    @property
    def journal(self) -> Journal:
        return self.store.record.journal

    @journal.setter
    def journal(self, j: Journal) -> None:
        if j != self.store.record.journal:
            self.store.save_journal(j)
        self.core.record = self.store.record

    def _move(self, new: InstallState, **changes: Any) -> None:
        self.journal = self.journal.with_state(new, **changes)
        self._on_transition(self.journal)
