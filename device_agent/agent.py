"""The device agent: serves the committed model, follows signed instructions, reports.

One ``Agent(dir)`` owns the files under ``DIR``, the MQTT link, the local API and a
worker thread. paho's network thread only decodes and queues; hashing, chunk writes,
extraction and the golden gate run on the worker. Bad input is logged, counted and
reported as an ``error`` event; it never stops the agent.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from device_agent import __version__, faults
from device_agent.config import AgentConfig
from device_agent.crashloop import CrashLoopGuard
from device_agent.errors import NoModelError, SlotError
from device_agent.installer import Installer
from device_agent.metrics import AgentMetrics
from device_agent.outbox import Outbox
from device_agent.override_store import load_override, save_override
from device_agent.persist import atomic_write_json, read_json
from device_agent.runtime import ModelRuntime, Prediction
from device_agent.shadow import ShadowRunner
from device_agent.shadow_install import ShadowStager
from device_agent.slots import Slots
from device_agent.state_store import StateStore
from device_agent.telemetry import TelemetryRecorder
from device_agent.trust_store import TrustGate
from model_bundles import keys as mb_keys
from ota import chunks as ota_chunks
from ota.install import IN_PROGRESS, InstallState, Journal, ResumeAction, resume_action
from ota.instructions import BundleRef, verify_instruction
from ota.messages import (
    ActiveModel,
    ChunkRequest,
    DeviceState,
    Event,
    InstallStatus,
    LatencySummary,
    Telemetry,
)
from ota.topics import DeviceTopics

__all__ = ["Agent"]

log = logging.getLogger(__name__)
S = InstallState
WINDOW = 8
REREQUEST_AFTER_S = 5.0
DISK_RESERVE_BYTES = 8 * 1024 * 1024
"""Free space kept beyond the transfer's needs (the part file and the extracted slot)."""


class Agent:
    def __init__(self, agent_dir: Path, *, config: AgentConfig | None = None,
                 api_port: int | None = None, backoff_base: float = 1.0) -> None:
        self.dir = Path(agent_dir)
        self.config = config or AgentConfig.load(self.dir)
        self.topics = DeviceTopics(self.config.device_id)
        self.fleet_key = mb_keys.load_public_key(self.config.fleet_public_key)
        self.store = StateStore(self.dir)
        self.trust = TrustGate.for_agent(self.dir, self.config.server_url)
        self.slots = Slots(self.dir)
        self.outbox = Outbox(self.dir / "outbox")
        self.recorder = TelemetryRecorder()
        self.metrics = AgentMetrics()  # GET /metrics on the local API (docs/metrics.md)
        self.metrics.watch(self)
        self.shadow = ShadowRunner()  # shadow mode (docs/shadow.md)
        self.shadow_stager = ShadowStager(
            self.dir, self.shadow, device_id=self.config.device_id,
            publish_request=lambda b: self.link and self.link.publish_now(
                self.topics.chunk_request, b),
            preferred=self.config.preferred_delegates,
            active_slot_dir=lambda: (self.slots.path(c.slot) if (c := self.slots.current())
                                     else None),
            on_error=lambda detail: self._event("error", detail=detail))
        self.guard = CrashLoopGuard(self.store.dir)
        self.installer = Installer(self.dir, store=self.store, slots=self.slots,
                                   preferred=self.config.preferred_delegates,
                                   on_transition=self._on_transition, guard=self.guard)
        self.installer.override = load_override(self.dir)
        self.api_port = self.config.api_port if api_port is None else api_port
        self.backoff_base = backoff_base
        self.journal: Journal = self.store.load_journal()
        self._runtime: ModelRuntime | None = None
        self._runtime_lock = threading.Lock()
        self._work: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1024)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._assembler: ota_chunks.ChunkAssembler | None = None
        self._ref: BundleRef | None = None
        self._last_chunk_at = 0.0
        self._outstanding: set[int] = set()
        self._instructions_waiting = 0  # queued "desired" messages: they stop an HTTP fetch
        self._waiting_lock = threading.Lock()
        self.rejected_messages = 0
        self.link: Any = None
        self.api: Any = None

    # -- serving ---------------------------------------------------------------------

    @property
    def runtime(self) -> ModelRuntime | None:
        return self._runtime

    def predict(self, inputs: Mapping[str, Any]) -> Prediction:
        """In-process inference for apps (``PredictError`` for bad inputs).

        ``Agent(dir).predict(...)`` works without ``start()``: an agent that was never
        started loads the committed model on first use (read-only: no MQTT, no local API).
        """
        rt = self._runtime
        if rt is None and not self._threads:
            rt = self._load_for_predict()
        if rt is None:
            raise NoModelError("no model is active")
        try:
            pred = rt.predict(inputs)
        except Exception:
            self.recorder.record_error()
            raise
        self.recorder.record(pred.latency_ms)
        self.shadow.offer(inputs, pred.outputs, pred.latency_ms)
        return pred

    def _load_for_predict(self) -> ModelRuntime | None:
        with self._runtime_lock:
            if self._runtime is None and (cur := self.slots.current()) is not None:
                self._runtime = ModelRuntime.load(
                    self.slots.path(cur.slot), self.config.preferred_delegates, gate=True,
                    override=self.installer.override)
                self.metrics.bind(self.recorder, self._runtime)
            return self._runtime

    def _set_runtime(self, rt: ModelRuntime | None) -> None:
        with self._runtime_lock:
            old, self._runtime = self._runtime, rt
            self.metrics.bind(self.recorder, rt)
        if old is not None and old is not rt:
            old.close()

    def load_current(self) -> None:
        cur = self.slots.current()
        if cur is not None and self.guard.looping(cur.slot, cur.sha256):
            crashes = self.guard.crashes(cur.slot, cur.sha256)
            self.journal = self.installer.roll_back_crash_loop(self.journal, crashes)
            cur = self.slots.current()
        if cur is None:
            return
        self.guard.begin(cur.slot, cur.sha256)
        try:
            faults.crash_on_load(cur.name, cur.version)
            rt = ModelRuntime.load(self.slots.path(cur.slot), self.config.preferred_delegates,
                                   gate=True, override=self.installer.override)
        except SlotError as e:
            self.guard.done()
            log.error("cannot serve slot %s: %s", cur.slot, e)
            self._event("error", detail=f"active slot {cur.slot} refused: {e}")
            return
        self.guard.done()
        self._set_runtime(rt)

    # -- lifecycle -------------------------------------------------------------------

    def recover(self) -> None:
        """Finish or undo what a crash interrupted (install-state-machine.md)."""
        marker = self.guard.count_crash_at_start()
        j = self.journal
        crashes = marker.crashes if marker is not None and (marker.slot, marker.sha256) == (
            j.target_slot, j.sha256) else 0
        action = resume_action(j, load_crashes=crashes)
        ref = self._load_ref()
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
            self._install_file(self._bundle_path(ref), ref, load=False)
        elif action in (ResumeAction.START_DOWNLOAD, ResumeAction.RESUME_DOWNLOAD) and ref:
            if self.journal.state is S.OFFERED:
                self._move(S.DOWNLOADING)
            if self._bundle_path(ref).exists():  # killed between finalize and verified
                self._install_file(self._bundle_path(ref), ref, load=False)
            else:
                self._assembler = self._new_assembler(ref)
                self._ref = ref
        elif action in (ResumeAction.START_DOWNLOAD, ResumeAction.RESUME_DOWNLOAD,
                        ResumeAction.STAGE):
            self._move(S.FAILED, error="install record lost; waiting for a new instruction")
        if self.journal.state not in IN_PROGRESS:
            self._clean_downloads()

    def start(self) -> None:
        from device_agent.local_api import LocalApi
        from device_agent.mqtt_link import MqttLink

        self.recover()
        self.load_current()
        self.shadow_stager.restore()
        self.shadow.start()
        self.api = LocalApi(lambda: self._runtime, self.recorder, host=self.config.api_host,
                            port=self.api_port, state_dir=self.store.dir,
                            max_input_bytes=self.config.api_max_input_bytes,
                            read_timeout_s=self.config.api_read_timeout_s,
                            max_connections=self.config.api_max_connections,
                            shadow=self.shadow, metrics=self.metrics).start()
        host, port, tls = self.config.mqtt_host_port
        self.link = MqttLink(
            device_id=self.config.device_id, host=host, port=port,
            username=self.config.mqtt_username, password=self.config.mqtt_password,
            will_topic=self.topics.state,
            will_payload=DeviceState.offline(self.config.device_id,
                                             agent_version=__version__).to_bytes(),
            subscriptions=self.topics.device_subscriptions, outbox=self.outbox,
            on_message=self._on_message, on_connected=self._on_connected, tls=tls,
            backoff_base=self.backoff_base, ack_topic=self.topics.ack,
        )
        for target, name in ((self._worker, "worker"), (self._ticker, "ticker")):
            t = threading.Thread(target=target, name=f"edgefleet-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self.link.start()
        self._event("agent", detail=f"started, serving {self._bundle_name() or 'nothing'}")

    def stop(self) -> None:
        self._stop.set()
        self._work.put_nowait(("stop", None))
        if self.link is not None:
            self.link.stop(final_state=(self.topics.state, DeviceState.offline(
                self.config.device_id, ts=time.time(), agent_version=__version__).to_bytes()))
        if self.api is not None:
            self.api.stop()
        for t in self._threads:
            t.join(timeout=5)
        self.shadow.stop()
        self._set_runtime(None)

    def healthy(self) -> bool:
        """What feeds the systemd watchdog: the ticker thread (telemetry, re-requests) is
        alive and the local API answers ``GET /v1/health``."""
        from device_agent.systemd import api_answers

        ticker = next((t for t in self._threads if t.name == "edgefleet-ticker"), None)
        return (ticker is not None and ticker.is_alive() and not self._stop.is_set()
                and self.api is not None and api_answers(self.api.url))

    def __enter__(self) -> Agent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- network thread: decode and queue -------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        kind = "desired" if topic == self.topics.desired else (
            "chunk" if topic == self.topics.chunks else None)
        if kind is None:
            self.rejected_messages += 1
            return
        try:
            self._work.put_nowait((kind, payload))
        except queue.Full:
            self.rejected_messages += 1
            return
        if kind == "desired":
            with self._waiting_lock:
                self._instructions_waiting += 1

    def _on_connected(self) -> None:
        self.publish_state()
        self._work.put_nowait(("rerequest", None))

    # -- worker --------------------------------------------------------------------------

    def _worker(self) -> None:
        while not self._stop.is_set():
            kind, payload = self._work.get()
            try:
                if kind == "stop":
                    return
                if kind == "desired":
                    with self._waiting_lock:
                        self._instructions_waiting -= 1
                    self._handle_desired(payload)
                elif kind == "chunk":
                    self._handle_chunk(payload)
                elif kind == "rerequest":
                    self._request_window()
                    self.shadow_stager.request_window()
            except Exception as e:  # never crash on bad input
                self.rejected_messages += 1
                log.exception("handling %s failed", kind)
                self._event("error", detail=f"{kind}: {e}")

    def _ticker(self) -> None:
        next_tel = time.monotonic() + self.config.telemetry_interval_s
        while not self._stop.wait(1.0):
            now = time.monotonic()
            if (self._assembler is not None
                    and now - self._last_chunk_at > REREQUEST_AFTER_S):
                self._work.put_nowait(("rerequest", None))
                self._last_chunk_at = now
            if now >= next_tel:
                next_tel = now + self.config.telemetry_interval_s
                self.send_telemetry()

    def _handle_desired(self, envelope: bytes) -> None:
        try:
            instr = verify_instruction(envelope, self.fleet_key, device_id=self.config.device_id,
                                       last_seq=self.store.applied_seq, now=time.time())
            self.trust.check(instr.bundle)  # TUF: the bundle is a trusted target (trust_store)
        except Exception as e:
            self.rejected_messages += 1
            self._event("error", detail=f"instruction refused: {e}")
            return
        ref = instr.bundle
        j = self.journal
        if (ref is not None and j.state in IN_PROGRESS and j.instruction_seq == instr.seq
                and j.sha256 == ref.sha256):
            # The install of this very instruction is recorded and resumed: a crash came
            # between recording it and recording applied_seq.
            self.store.set_applied_seq(instr.seq)
            return
        self.shadow_stager.apply(instr.shadow, instr.shadow_sample_rate)
        cur = self.slots.current()
        if ref is not None and save_override(self.dir, instr.delegate_override):
            self.installer.override = load_override(self.dir)  # a changed override re-selects
            if cur is not None and cur.sha256 == ref.sha256 and self._runtime is not None:
                self.load_current()
        if ref is None:  # "no model change": also cancels an install under way
            self._cancel(f"cancelled by instruction {instr.seq}")
            self.store.set_applied_seq(instr.seq)
            self.publish_state()
            return
        if cur is not None and cur.sha256 == ref.sha256:
            self._cancel(f"superseded by instruction {instr.seq}")
            self.store.set_applied_seq(instr.seq)
            self.publish_state()
            return
        if self.journal.state in IN_PROGRESS:
            self._move(S.FAILED, error=f"superseded by instruction {instr.seq}")
            if self._assembler is not None and self._assembler.sha256 != ref.sha256:
                self._assembler.discard()
        self._save_ref(ref)
        self._move(S.OFFERED, instruction_seq=instr.seq, sha256=ref.sha256, name=ref.name,
                   version=ref.version, error=None, target_slot=None, previous_slot=None)
        # applied_seq only after the install is on record: a crash in between must leave the
        # instruction acceptable again (see docs/install-state-machine.md, "ordering").
        self.store.set_applied_seq(instr.seq)
        self._move(S.DOWNLOADING)
        need = ref.size * 2 + DISK_RESERVE_BYTES
        free = faults.free_bytes(self.dir)
        if free < need:
            self._move(S.FAILED, error=f"not enough disk space: the install needs {need} bytes "
                                       f"free, {free} are")
            return
        self._ref = ref
        self._assembler = self._new_assembler(ref)
        self._request_window()

    def _cancel(self, why: str) -> None:
        """Stop a transfer under way (the only install state an instruction can meet)."""
        if self.journal.state not in IN_PROGRESS:
            return
        if self._assembler is not None:
            self._assembler.discard()
        self._assembler, self._ref, self._outstanding = None, None, set()
        self._move(S.FAILED, error=why)
        self._clean_downloads()

    def _handle_chunk(self, payload: bytes) -> None:
        if self.shadow_stager.handle_chunk(payload):
            return
        asm, ref = self._assembler, self._ref
        if asm is None or ref is None:
            return
        header, data = ota_chunks.decode_chunk_frame(payload, ref.chunk_size)
        if header.sha256 != ref.sha256:
            return
        self._last_chunk_at = time.monotonic()
        asm.accept(header.index, data)
        self._chunk_written(header.index)
        self._outstanding.discard(header.index)
        if asm.complete:
            self._finish_transfer(asm, ref)
        elif not self._outstanding:
            self._request_window()

    def _chunk_written(self, index: int) -> None:
        self._last_chunk_at = time.monotonic()
        faults.kill_point(f"chunk:{index}")
        faults.chunk_delay()

    def _finish_transfer(self, asm: ota_chunks.ChunkAssembler, ref: BundleRef) -> None:
        self._assembler = None
        try:
            path = asm.finalize(self._bundle_path(ref))
        except Exception as e:
            self._move(S.FAILED, error=str(e))
            return
        self._install_file(path, ref, load=True)

    def _fetch_http(self, asm: ota_chunks.ChunkAssembler, ref: BundleRef) -> None:
        """The range path for large bundles (docs/mqtt-protocol.md, "HTTP range path").

        Runs on the worker, so it yields between chunks whenever an instruction is waiting
        in the queue (a cancel or a superseding bundle) or the agent stops; the fetch is
        picked up again by the ``rerequest`` queued behind that instruction."""
        from device_agent.http_fetch import fetch_missing

        url = f"{self.config.server_url.rstrip('/')}/api/v1/bundles/{ref.sha256}/download"
        try:
            fetch_missing(asm, url, device_id=self.config.device_id,
                          secret=self.config.mqtt_password, on_chunk=self._chunk_written,
                          should_stop=lambda: self._http_should_yield(asm))
        except Exception as e:  # retried by the ticker after REREQUEST_AFTER_S
            log.warning("HTTP range download failed: %s", e)
            self._event("error", detail=f"http download: {e}")
            return
        if asm.complete and self._assembler is asm:
            self._finish_transfer(asm, ref)
        elif self._assembler is asm and not self._stop.is_set():
            with contextlib.suppress(queue.Full):  # else the ticker re-requests
                self._work.put_nowait(("rerequest", None))  # after the waiting instruction

    def _http_should_yield(self, asm: ota_chunks.ChunkAssembler) -> bool:
        return (self._stop.is_set() or self._assembler is not asm
                or self._instructions_waiting > 0)

    def _request_window(self) -> None:
        asm, ref = self._assembler, self._ref
        if asm is not None and ref is not None and (
                ref.size >= self.config.http_download_min_bytes):
            self._fetch_http(asm, ref)
            return
        if asm is None or ref is None or self.link is None:
            return
        wanted = asm.next_request(WINDOW)
        self._outstanding = set(wanted)
        for index, count in ota_chunks.request_ranges(wanted):
            req = ChunkRequest(device_id=self.config.device_id, sha256=ref.sha256,
                               index=index, count=count)
            self.link.publish_now(self.topics.chunk_request, req.to_bytes())

    def _install_file(self, path: Path, ref: BundleRef, *, load: bool) -> None:
        self.journal, rt = self.installer.install(path, ref, self.journal)
        path.unlink(missing_ok=True)
        if rt is not None:
            self._set_runtime(rt)
        self.publish_state()

    # -- persistence helpers -------------------------------------------------------------

    def _bundle_path(self, ref: BundleRef) -> Path:
        return self.dir / "downloads" / f"{ref.sha256}.efb"

    def _new_assembler(self, ref: BundleRef) -> ota_chunks.ChunkAssembler:
        return ota_chunks.ChunkAssembler(
            self.dir / "downloads" / f"{ref.sha256}.part", sha256=ref.sha256, size=ref.size,
            chunk_size=ref.chunk_size, chunk_hashes=ref.chunk_hashes)

    def _clean_downloads(self) -> None:
        """No install under way: whatever is in ``downloads/`` is left over from a crash."""
        for path in (self.dir / "downloads").glob("*"):
            if self._assembler is None or path.name.split(".")[0] != self._assembler.sha256:
                path.unlink(missing_ok=True)

    def _save_ref(self, ref: BundleRef) -> None:
        atomic_write_json(self.store.dir / "bundle_ref.json", ref.to_dict())

    def _load_ref(self) -> BundleRef | None:
        try:
            return BundleRef.from_dict(read_json(self.store.dir / "bundle_ref.json"))
        except Exception:
            return None

    def _move(self, new: InstallState, **changes: Any) -> None:
        self.journal = self.journal.with_state(new, **changes)
        self.store.save_journal(self.journal)
        self._on_transition(self.journal)

    # -- reporting -----------------------------------------------------------------------

    def _bundle_name(self) -> str | None:
        rt = self._runtime
        return rt.bundle if rt else None

    def _on_transition(self, j: Journal) -> None:
        self._event("install", state=j.state.value, instruction_seq=j.instruction_seq,
                    sha256=j.sha256, detail=j.error or "")
        self.publish_state()

    def _event(self, kind: str, **fields: Any) -> None:
        ev = Event(device_id=self.config.device_id, seq=self.store.next_message_seq(),
                   ts=time.time(), kind=kind, **fields)
        if self.link is not None:
            self.link.publish_durable(self.topics.events, ev.to_bytes(), key=ev.seq)
        else:
            self.outbox.put(self.topics.events, ev.to_bytes(), key=ev.seq)

    def device_state(self) -> DeviceState:
        cur, rt, j = self.slots.current(), self._runtime, self.journal
        active = None
        if cur is not None and rt is not None:
            active = ActiveModel(name=cur.name, version=cur.version, sha256=cur.sha256,
                                 slot=cur.slot, delegate=rt.delegate,
                                 execution=rt.execution)
        install = None
        if j.state is not S.IDLE and j.sha256:
            progress = 1.0 if j.state not in (S.OFFERED, S.DOWNLOADING) else (
                self._assembler.progress if self._assembler else 0.0)
            install = InstallStatus(seq=j.instruction_seq, sha256=j.sha256, state=j.state.value,
                                    error=j.error, progress=progress)
        return DeviceState(device_id=self.config.device_id, status="online", ts=time.time(),
                           agent_version=__version__, applied_seq=self.store.applied_seq,
                           active=active, install=install)

    def publish_state(self) -> None:
        if self.link is not None:
            self.link.publish_retained(self.topics.state, self.device_state().to_bytes())

    def send_telemetry(self) -> None:
        st = self.recorder.snapshot()
        rt = self._runtime
        lat = LatencySummary(**st.latency_ms) if st.latency_ms else None
        tel = Telemetry(device_id=self.config.device_id, seq=self.store.next_message_seq(),
                        ts=time.time(), window_s=st.window_s,
                        bundle=rt.bundle if rt else None, delegate=rt.delegate if rt else None,
                        inferences=st.inferences, errors=st.errors,
                        total_inferences=st.total_inferences, total_errors=st.total_errors,
                        latency_ms=lat, variant=rt.variant.id if rt else None,
                        fallback=bool(rt.session.fallback) if rt else None)
        if self.link is not None:
            self.link.publish_durable(self.topics.telemetry, tel.to_bytes(), key=tel.seq)
        else:
            self.outbox.put(self.topics.telemetry, tel.to_bytes(), key=tel.seq)
        self.send_shadow_report()

    def send_shadow_report(self) -> None:
        """Close the shadow window (if a candidate runs) and publish its ShadowReport."""
        rt = self._runtime
        if self.shadow.candidate is not None and rt is not None:
            report = self.shadow.collect(device_id=self.config.device_id,
                                         seq=self.store.next_message_seq(), active=rt.bundle)
            if report is not None:
                self.metrics.record_shadow_report(report)
                if self.link is not None:
                    self.link.publish_durable(self.topics.shadow, report.to_bytes(),
                                              key=report.seq)
                else:
                    self.outbox.put(self.topics.shadow, report.to_bytes(), key=report.seq)
        if self.shadow_stager.stalled():
            self._work.put_nowait(("rerequest", None))

