"""The device agent: serves the committed model, follows signed instructions, reports.

One ``Agent(dir)`` owns the files under ``DIR``, the MQTT link, the local API and a
worker thread. paho's network thread only decodes and queues; hashing, chunk writes,
extraction and the golden gate run on the worker. Bad input is logged, counted and
reported as an ``error`` event; it never stops the agent.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from device_agent import __version__, faults, heap, identity
from device_agent.config import AgentConfig
from device_agent.crashloop import CrashLoopGuard
from device_agent.errors import NoModelError, SlotError
from device_agent.installer import Installer
from device_agent.metrics import AgentMetrics
from device_agent.outbox import Outbox
from device_agent.override_store import as_override
from device_agent.report_signer import DeviceReportSigner
from device_agent.runtime import ModelRuntime, Prediction
from device_agent.serving import ServingHolder
from device_agent.shadow import ShadowRunner
from device_agent.shadow_budget import ShadowConfig
from device_agent.shadow_install import ShadowStager
from device_agent.slots import Slots
from device_agent.state_store import StateStore
from device_agent.telemetry import TelemetryRecorder
from device_agent.trust_store import TrustGate
from device_agent.update_shell import UpdateShell
from model_bundles import keys as mb_keys
from ota import chunks as ota_chunks
from ota.install import InstallState, Journal
from ota.messages import (
    ActiveModel,
    DeviceState,
    Event,
    InstallStatus,
    LatencySummary,
    Telemetry,
)
from ota.model import replace
from ota.topics import DeviceTopics
from ota.updater import core as uc
from ota.updater.transfer import Role

__all__ = ["Agent"]

log = logging.getLogger(__name__)
S = InstallState


class Agent(UpdateShell):
    """Serving, lifecycle, threads and reporting; the update path is ``UpdateShell``."""

    def __init__(self, agent_dir: Path, *, config: AgentConfig | None = None,
                 api_port: int | None = None, backoff_base: float = 1.0,
                 heap_trim: bool = False) -> None:
        self.dir = Path(agent_dir)
        self.config = config or AgentConfig.load(self.dir)
        self.topics = DeviceTopics(self.config.device_id)
        self.fleet_key = mb_keys.load_public_key(self.config.fleet_public_key)
        self.store = StateStore(self.dir)
        self.trust = TrustGate.for_agent(self.dir, self.config.server_url)
        self.slots = Slots(self.dir)
        self.outbox = Outbox(self.dir / "outbox")
        self.signer = DeviceReportSigner(self.dir)  # every report is signed (ota.signed_report)
        self.recorder = TelemetryRecorder()
        self.metrics = AgentMetrics()  # GET /metrics on the local API (docs/metrics.md)
        self.metrics.watch(self)
        self.shadow = ShadowRunner(ShadowConfig(  # shadow mode (docs/shadow.md)
            samples_per_minute=float(self.config.shadow_samples_per_minute)))
        self.shadow_stager = ShadowStager(
            self.dir, self.shadow, preferred=self.config.preferred_delegates,
            active_slot_dir=lambda: (self.slots.path(c.slot) if (c := self.slots.current())
                                     else None))
        # The update path's pure core (ota.updater); this agent is its shell. Only the
        # worker thread calls it: the paho thread and the ticker queue events.
        self.core = uc.UpdaterCore(self.store.record, fleet_key=self.fleet_key,
                                   device_id=self.config.device_id,
                                   http_min_bytes=self.config.http_download_min_bytes)
        self._assemblers: dict[Role, ota_chunks.ChunkAssembler] = {}
        self.guard = CrashLoopGuard(self.store.dir)
        self.installer = Installer(self.dir, store=self.store, slots=self.slots,
                                   preferred=self.config.preferred_delegates,
                                   on_transition=self._on_transition, guard=self.guard)
        self.installer.override = as_override(self.store.record.delegate_override)
        self.api_port = self.config.api_port if api_port is None else api_port
        self.backoff_base = backoff_base
        self.serving = ServingHolder(
            on_swap=lambda rt: self.metrics.bind(self.recorder, rt))
        self._runtime_lock = threading.Lock()
        self._work: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1024)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._renewer: identity.Renewer | None = None  # device certificate (identity.py)
        self._recovering = False
        self._tick_queued = threading.Event()
        self._instructions_waiting = 0  # queued "desired" messages: they stop an HTTP fetch
        self._waiting_lock = threading.Lock()
        self.rejected_messages = 0  # counted from the paho thread and the worker
        self._count_lock = threading.Lock()
        self.link: Any = None
        self.api: Any = None
        # device-agent run hands freed C heap back once the agent goes quiet (heap.py)
        self._heap = heap.IdleTrim(lambda: (
            self.recorder.total_inferences, self.recorder.total_errors,
            self.journal.instruction_seq, self.journal.state)) if heap_trim else None

    # -- serving ---------------------------------------------------------------------

    @property
    def _runtime(self) -> ModelRuntime | None:
        return self.serving.current

    @property
    def runtime(self) -> ModelRuntime | None:
        return self.serving.current

    def predict(self, inputs: Mapping[str, Any]) -> Prediction:
        """In-process inference for apps (``PredictError`` for bad inputs).

        The one predict entry point (``ServingHolder``): a model swap waits for the
        predicts running on the old runtime before closing it. ``Agent(dir).predict(...)``
        works without ``start()``: an agent that was never started loads the committed
        model on first use (read-only: no MQTT, no local API).
        """
        if self.serving.current is None and not self._threads:
            self._load_for_predict()
        try:
            pred = self.serving.predict(inputs)
        except NoModelError:
            raise
        except Exception:
            self.recorder.record_error()
            raise
        self.recorder.record(pred.latency_ms)
        self.shadow.offer(inputs, pred.outputs, pred.latency_ms)
        return pred

    def _load_for_predict(self) -> ModelRuntime | None:
        with self._runtime_lock:
            if self.serving.current is None and (cur := self.slots.current()) is not None:
                self.serving.swap(ModelRuntime.load(
                    self.slots.path(cur.slot), self.config.preferred_delegates, gate=True,
                    override=self.installer.override))
            return self.serving.current

    def _set_runtime(self, rt: ModelRuntime | None) -> None:
        with self._runtime_lock:
            self.serving.swap(rt)  # closes the old runtime once its predicts drained

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

    def start(self) -> None:
        from device_agent.local_api import LocalApi
        from device_agent.mqtt_link import MqttLink
        from device_agent.server_tls import link_tls

        self.recover()
        self.load_current()
        self.shadow.start()
        # ServedRuntime stands in for ModelRuntime here; not yet a shared Protocol (follow-up)
        self.api = LocalApi(self.serving.view,  # type: ignore[arg-type]
                            self.recorder, host=self.config.api_host,
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
            will_payload=self.signer.sign(DeviceState.offline(
                self.config.device_id, agent_version=__version__,
                seq=self.store.next_state_seq()).to_bytes()),
            subscriptions=self.topics.device_subscriptions, outbox=self.outbox,
            on_message=self._on_message, on_connected=self._on_connected,
            tls=link_tls(self.dir, tls),
            backoff_base=self.backoff_base, ack_topic=self.topics.ack,
        )
        for target, name in ((self._worker, "worker"), (self._ticker, "ticker")):
            t = threading.Thread(target=target, name=f"edgefleet-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self.link.start()
        self._renewer = identity.Renewer(self.dir, server=self.config.server_url,
                                         device_id=self.config.device_id).start()
        self._event("agent", detail=f"started, serving {self._bundle_name() or 'nothing'}")

    def stop(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.stop()
        self._work.put_nowait(("stop", None))
        if self.link is not None:
            self.link.stop(final_state=(self.topics.state, self.signer.sign(DeviceState.offline(
                self.config.device_id, ts=time.time(), agent_version=__version__,
                seq=self.store.next_state_seq()).to_bytes())))
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

    # -- network thread and ticker: they only queue events for the worker -----------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        kind = "desired" if topic == self.topics.desired else (
            "chunk" if topic == self.topics.chunks else None)
        if kind is None:
            self._reject()
            return
        waiting = 1 if kind == "desired" else 0  # counted before the worker can take it
        with self._waiting_lock:
            self._instructions_waiting += waiting
        try:
            self._work.put_nowait((kind, payload))
        except queue.Full:
            with self._waiting_lock:
                self._instructions_waiting -= waiting
            self._reject()

    def _reject(self) -> None:
        with self._count_lock:
            self.rejected_messages += 1

    def _on_connected(self) -> None:
        self._queue("connected")

    def _queue(self, kind: str, payload: Any = None) -> bool:
        try:
            self._work.put_nowait((kind, payload))
        except queue.Full:  # the ticker queues the next tick anyway
            return False
        return True

    def _ticker(self) -> None:
        next_tel = time.monotonic() + self.config.telemetry_interval_s
        while not self._stop.wait(1.0):
            if not self._tick_queued.is_set():  # one tick waits at most: a long fetch or
                self._tick_queued.set()  # install on the worker does not pile them up
                if not self._queue("tick"):
                    self._tick_queued.clear()
            now = time.monotonic()
            if now >= next_tel:
                next_tel = now + self.config.telemetry_interval_s
                self.send_telemetry()
            if self._heap is not None:
                self._heap.poll()

    # -- worker: the only thread that touches the update path -------------------------------

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
                    self._run(self.core.on_rerequest())
                elif kind == "connected":
                    self.publish_state()
                    self._run(self.core.on_rerequest())
                elif kind == "tick":
                    self._tick_queued.clear()
                    self._run(self.core.on_tick(time.time()))
            except Exception as e:  # never crash on bad input
                self._reject()
                log.exception("handling %s failed", kind)
                self._event("error", detail=f"{kind}: {e}")

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
                   ts=time.time(), kind=kind, **fields)  # type: ignore[arg-type]  # kind: an Event kind
        self._publish_report(self.topics.events, ev.to_bytes(), ev.seq)

    def _publish_report(self, topic: str, report: bytes, seq: int) -> None:
        """Sign a report and hand it to the outbox (through the link when there is one)."""
        envelope = self.signer.sign(report)
        if self.link is not None:
            self.link.publish_durable(topic, envelope, key=seq)
        else:
            self.outbox.put(topic, envelope, key=seq)

    def _active_sha256(self, rt: ModelRuntime | None) -> str | None:
        """The hash of the bundle ``rt`` serves (its slot's), the one reports are bound to."""
        cur = self.slots.current()
        if rt is None or cur is None or rt.bundle != f"{cur.name}@{cur.version}":
            return None
        return cur.sha256

    def device_state(self, seq: int = 0) -> DeviceState:
        cur, rt, j = self.slots.current(), self._runtime, self.journal
        active = None
        if cur is not None and rt is not None:
            active = ActiveModel(name=cur.name, version=cur.version, sha256=cur.sha256,
                                 slot=cur.slot, delegate=rt.delegate,  # type: ignore[arg-type]  # "a"/"b"
                                 execution=rt.execution)
        install = None
        if j.state is not S.IDLE and j.sha256:
            t = self.core.transfers.get(Role.BUNDLE) or self.core.transfers.get(Role.DELTA)
            progress = 1.0 if j.state not in (S.OFFERED, S.DOWNLOADING) else (
                t.progress if t is not None else 0.0)
            install = InstallStatus(seq=j.instruction_seq, sha256=j.sha256, state=j.state.value,
                                    error=j.error, progress=progress)
        return DeviceState(device_id=self.config.device_id, status="online", ts=time.time(),
                           agent_version=__version__, applied_seq=self.store.applied_seq,
                           active=active, install=install, seq=seq)

    def publish_state(self) -> None:
        if self.link is not None:
            state = self.device_state(seq=self.store.next_state_seq())
            self.link.publish_retained(self.topics.state, self.signer.sign(state.to_bytes()))

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
                        fallback=bool(rt.session.fallback) if rt else None,
                        bundle_sha256=self._active_sha256(rt))
        self._publish_report(self.topics.telemetry, tel.to_bytes(), tel.seq)
        self.send_shadow_report()

    def send_shadow_report(self) -> None:
        """Close the shadow window (if a candidate runs) and publish its ShadowReport."""
        rt = self._runtime
        if self.shadow.candidate is not None and rt is not None:
            report = self.shadow.collect(device_id=self.config.device_id,
                                         seq=self.store.next_message_seq(), active=rt.bundle)
            if report is not None:
                report = replace(report, active_sha256=self._active_sha256(rt))
                self.metrics.record_shadow_report(report)
                self._publish_report(self.topics.shadow, report.to_bytes(), report.seq)

