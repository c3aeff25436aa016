"""One simulated device: a paho MQTT client that follows its signed instructions.

It keeps no files: bundle chunks are requested over MQTT like the agent does and each is
checked against its signed hash (then the whole file against the bundle sha256), but the
bytes are not installed; "installing" walks the install states and reports them.
"""

from __future__ import annotations

import hashlib
import random
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from paho.mqtt.enums import CallbackAPIVersion

from device_agent.simulator.behaviour import GOOD, Behaviour
from device_agent.simulator.netloop import NetLoop, NonBlockingClient
from ota.chunks import decode_chunk_frame
from ota.errors import ProtocolError
from ota.instructions import BundleRef, Instruction, chunk_count, verify_instruction
from ota.limits import DEFAULT_LIMITS
from ota.messages import (
    ActiveModel,
    ChunkRequest,
    DeviceState,
    Event,
    InputDrift,
    InstallStatus,
    LatencySummary,
    ShadowReport,
    Telemetry,
)
from ota.signed_report import ReportSigner
from ota.topics import DeviceTopics

AGENT_VERSION = "sim-1"
BASE_LATENCY_MS = 4.0
INSTALL_STEPS = ("offered", "downloading", "verified", "staged", "trial", "committed")


class _Download:
    def __init__(self, ref: BundleRef, done: Callable[[bool], None]) -> None:
        self.ref = ref
        self.total = chunk_count(ref.size, ref.chunk_size)
        self.chunks: dict[int, bytes] = {}
        self.done = done


class SimDevice:
    def __init__(self, *, device_id: str, mqtt_host: str, mqtt_port: int, password: str,
                 fleet_public_key: Ed25519PublicKey, device_key: Ed25519PrivateKey,
                 behaviour_for: Callable[[str], Behaviour], stats: Any,
                 rng: random.Random, net: NetLoop,
                 tls_context: ssl.SSLContext | None = None) -> None:
        self.device_id = device_id
        self.topics = DeviceTopics(device_id)
        self._fleet_key = fleet_public_key
        self._signer = ReportSigner(device_key)  # every report signed, as the agent does
        self._behaviour_for = behaviour_for
        self._stats = stats
        self._rng = rng
        self._lock = threading.RLock()
        self.applied_seq = 0
        self.active: BundleRef | None = None
        self.shadow: BundleRef | None = None
        self.shadow_ready = False
        self.shadow_pace: float | None = None
        """The shadow samples per minute the last instruction asked for (recorded only)."""
        self.install: InstallStatus | None = None
        self.received_instructions: list[bytes] = []
        """Every signed instruction envelope received, in order (tests check that no seq came
        with two different instructions)."""
        self.sent_telemetry: list[int] = []
        """The seq of every telemetry report published (tests count them in the registry)."""
        self._download: _Download | None = None
        self._seq = int(time.time() * 1000)  # ms: increases across simulator restarts
        self.online = False
        self._host, self._port = mqtt_host, mqtt_port
        self._net = net
        client = NonBlockingClient(CallbackAPIVersion.VERSION2, client_id=device_id,
                                   clean_session=False)
        client.username_pw_set(device_id, password)
        if tls_context is not None:  # mqtts: its certificate, the fleet CA (SimFleet)
            client.tls_set_context(tls_context)
        client.will_set(self.topics.state, self._signer.sign(
            DeviceState.offline(device_id, seq=self._next_seq()).to_bytes()), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        self._client = client

    # -- connection (the network I/O runs on the shared NetLoop thread) -------------------------
    def connect(self) -> None:
        self._client.connect_async(self._host, self._port, keepalive=60)
        self._net.add(self._client)

    def disconnect(self) -> None:
        """Go offline the way a dead device does (the broker publishes the last will)."""
        self.online = False
        self._net.drop(self._client)

    def stop(self) -> None:
        self.online = False
        self._net.release(self._client)
        self._client.disconnect()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self.online = False

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self._stats["connect_refused"] += 1
            return
        client.subscribe([(topic, 1) for topic in self.topics.device_subscriptions])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        self.online = True
        self.publish_state()
        with self._lock:
            if self._download is not None:
                self._request_missing()

    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=1, retain=retain)

    def _report(self, topic: str, report: bytes, *, retain: bool = False) -> None:
        """Publish a device-signed report (its cost: `python -m bench.report_signing`)."""
        self._publish(topic, self._signer.sign(report), retain=retain)

    def publish_state(self) -> None:
        with self._lock:
            active = None if self.active is None else ActiveModel(
                self.active.name, self.active.version, self.active.sha256, "a", "cpu")
            state = DeviceState(self.device_id, "online", time.time(), AGENT_VERSION,
                                self.applied_seq, active, self.install, self._next_seq())
            self._report(self.topics.state, state.to_bytes(), retain=True)

    # -- incoming -------------------------------------------------------------------------------
    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic == self.topics.desired:
                if msg.payload:
                    self.received_instructions.append(bytes(msg.payload))
                    self._on_instruction(bytes(msg.payload))
            elif msg.topic == self.topics.chunks:
                self._on_chunk(bytes(msg.payload))
        except ProtocolError as e:
            self._stats["rejected"] += 1
            self._stats[f"rejected:{type(e).__name__}"] += 1

    def _on_instruction(self, envelope: bytes) -> None:
        with self._lock:
            instr = verify_instruction(envelope, self._fleet_key, device_id=self.device_id,
                                       last_seq=self.applied_seq, now=time.time())
            self.applied_seq = instr.seq
            self.shadow_pace = instr.shadow_samples_per_minute
            self._stats["instructions"] += 1
            self._apply(instr)

    def _apply(self, instr: Instruction) -> None:
        target = instr.bundle
        if target is None or (self.active and target.sha256 == self.active.sha256):
            if target is None:
                self.active = None
            self._set_shadow(instr.shadow)
            self._report_install(instr.seq, target.sha256 if target else None, "committed")
            return
        self._set_shadow(None)
        self._report_install(instr.seq, target.sha256, "offered")
        self._report_install(instr.seq, target.sha256, "downloading")
        seq = instr.seq

        def finished(ok: bool) -> None:
            behaviour = self._behaviour_for(f"{target.name}@{target.version}")
            if not ok:
                self._report_install(seq, target.sha256, "failed", "chunk hash mismatch")
                return
            if behaviour.fail_install:
                self._report_install(seq, target.sha256, "failed",
                                     "golden vectors failed on every delegate (simulated)")
                return
            for state in INSTALL_STEPS[2:]:
                self._report_install(seq, target.sha256, state)
            self.active = target
            self._set_shadow(instr.shadow)
            self.publish_state()

        self._start_download(target, finished)

    def _set_shadow(self, ref: BundleRef | None) -> None:
        self.shadow, self.shadow_ready = ref, False
        if ref is None:
            return

        def ready(ok: bool) -> None:
            self.shadow_ready = ok and self.shadow is ref

        self._start_download(ref, ready)

    def _report_install(self, seq: int, sha: str | None, state: str,
                        error: str | None = None) -> None:
        self.install = InstallStatus(seq=seq, sha256=sha, state=state, error=error,
                                     progress=1.0 if state == "committed" else 0.0)
        event = Event(self.device_id, self._next_seq(), time.time(), "install", state=state,
                      instruction_seq=seq, sha256=sha, detail=error or "")
        self._report(self.topics.events, event.to_bytes())
        if state in ("committed", "failed"):
            self._stats[f"install_{state}"] += 1
            self.publish_state()

    # -- chunks ---------------------------------------------------------------------------------
    def _start_download(self, ref: BundleRef, done: Callable[[bool], None]) -> None:
        self._download = _Download(ref, done)
        self._request_missing()

    def _request_missing(self) -> None:
        d = self._download
        if d is None:
            raise RuntimeError("no download in progress")
        missing = [i for i in range(d.total) if i not in d.chunks][:DEFAULT_LIMITS.max_window]
        if missing:
            req = ChunkRequest(self.device_id, d.ref.sha256, missing[0], len(missing))
            self._publish(self.topics.chunk_request, req.to_bytes())

    def _on_chunk(self, payload: bytes) -> None:
        with self._lock:
            d = self._download
            header, data = decode_chunk_frame(payload, DEFAULT_LIMITS.max_chunk_size)
            if d is None or header.sha256 != d.ref.sha256 or header.index >= d.total:
                self._stats["chunks_unexpected"] += 1
                return
            if hashlib.sha256(data).hexdigest() != d.ref.chunk_hashes[header.index]:
                self._stats["chunks_bad_hash"] += 1
                return
            d.chunks[header.index] = data
            self._stats["chunks"] += 1
            if len(d.chunks) < d.total:
                if len(d.chunks) % DEFAULT_LIMITS.max_window == 0:
                    self._request_missing()
                return
            whole = hashlib.sha256(b"".join(d.chunks[i] for i in range(d.total))).hexdigest()
            self._download = None
            d.done(whole == d.ref.sha256)

    # -- reports --------------------------------------------------------------------------------
    def report(self, window_s: float, inferences: int) -> int:
        """Publish one telemetry window (and one shadow report when shadowing)."""
        if not self.online:
            return 0
        with self._lock:
            active, shadow, ready = self.active, self.shadow, self.shadow_ready
        sent = 0
        if active is not None:
            tel = self._telemetry(active, window_s, inferences)
            self._report(self.topics.telemetry, tel.to_bytes())
            self.sent_telemetry.append(tel.seq)
            sent += 1
            if shadow is not None and ready:
                self._report(self.topics.shadow,
                             self._shadow_report(active, shadow, window_s,
                                                 inferences).to_bytes())
                sent += 1
        return sent

    def _telemetry(self, active: BundleRef, window_s: float, inferences: int) -> Telemetry:
        b = self._behaviour_for(f"{active.name}@{active.version}")
        errors = sum(1 for _ in range(inferences) if self._rng.random() < b.error_rate)
        return Telemetry(self.device_id, self._next_seq(), time.time(), window_s,
                         f"{active.name}@{active.version}", "cpu", inferences, errors,
                         inferences, errors, self._latency(b), bundle_sha256=active.sha256)

    def backlog(self, count: int, window_s: float, inferences: int) -> list[tuple[str, bytes]]:
        """``count`` telemetry windows signed now and not sent yet, as an agent's outbox
        holds them after an outage (recorded in ``sent_telemetry``); ``flush`` sends them."""
        with self._lock:
            active = self.active
        if active is None:
            return []
        out = []
        for _ in range(count):
            tel = self._telemetry(active, window_s, inferences)
            out.append((self.topics.telemetry, self._signer.sign(tel.to_bytes())))
            self.sent_telemetry.append(tel.seq)
        return out

    def flush(self, messages: list[tuple[str, bytes]]) -> None:
        """Publish signed reports from ``backlog`` (QoS 1)."""
        for topic, payload in messages:
            self._publish(topic, payload)

    def _latency(self, b: Behaviour) -> LatencySummary:
        base = BASE_LATENCY_MS * b.slow * (0.9 + 0.2 * self._rng.random())
        return LatencySummary(round(base, 3), round(base * 1.5, 3), round(base * 2, 3))

    def _shadow_report(self, active: BundleRef, cand: BundleRef, window_s: float,
                       samples: int) -> ShadowReport:
        b = self._behaviour_for(f"{cand.name}@{cand.version}")
        agree = sum(1 for _ in range(samples) if self._rng.random() >= b.disagree)
        errors = sum(1 for _ in range(samples) if self._rng.random() < b.error_rate)
        drift = {"features": InputDrift(psi=round(0.02 * self._rng.random(), 4),
                                        ks_stat=0.05, ks_pvalue=0.5, drifted=False)}
        return ShadowReport(
            device_id=self.device_id, seq=self._next_seq(), ts=time.time(),
            window_s=window_s, active=f"{active.name}@{active.version}",
            candidate=f"{cand.name}@{cand.version}", candidate_sha256=cand.sha256,
            task="classification", samples=samples, dropped=0, candidate_errors=errors,
            top1_agreement=agree / samples if samples else None,
            score_delta_mean=round(b.disagree * 0.5 + 0.01 * self._rng.random(), 4),
            latency_ms_active=self._latency(self._behaviour_for(
                f"{active.name}@{active.version}")),
            latency_ms_candidate=self._latency(b), candidate_delegate="cpu",
            candidate_fallback=b.fallback, drift=drift, active_sha256=active.sha256)


def behaviour_lookup(behaviours: dict[str, Behaviour]) -> Callable[[str], Behaviour]:
    return lambda ref: behaviours.get(ref, GOOD)
