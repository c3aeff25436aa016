"""The server's MQTT client: ingests device state, telemetry and events, serves chunks,
publishes signed instructions. Malformed payloads are dropped and counted; nothing crashes.

Reports (telemetry, events, shadow) pass the sender's rate limit before anything parses
them; every message then goes through the bounded ``ReportIngest`` queue, and stored
reports are confirmed to their device with a ``ReportAck`` (docs/mqtt-protocol.md).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleet_server.broker_auth import SERVER_CLIENT_PREFIX, SERVER_USERNAME
from fleet_server.db import DatabaseError
from fleet_server.errors import NotFoundError
from fleet_server.metrics import REPORT_KINDS, ServerMetrics
from fleet_server.mqtt_loop import Backoff, ClientLoop
from fleet_server.registry import Registry
from fleet_server.report_book import ReportBook, instruction_hashes
from fleet_server.report_ingest import ReportIngest
from fleet_server.report_verify import RejectionLog, Report, ReportRejected, ReportVerifier
from fleet_server.rollout_store import RolloutStore
from fleet_server.telemetry_limits import DeviceRateLimiter, LogThrottle, TelemetryLimits
from fleet_server.tls import ServerTls
from ota.chunks import encode_chunk_frame, read_chunk
from ota.errors import ProtocolError
from ota.instructions import chunk_count
from ota.limits import DEFAULT_CHUNK_SIZE
from ota.messages import ChunkRequest, DeviceState, Event, ShadowReport, Telemetry
from ota.topics import SERVER_SUBSCRIPTIONS, DeviceTopics, parse_device_topic

log = logging.getLogger(__name__)
_T = TypeVar("_T")

SESSION_EXPIRY_S = 3600
"""How long an MQTT v5 broker keeps a replica's session (its shared subscriptions and the
QoS 1 messages routed to it) while the replica is away: a restarted replica gets them."""


class MqttBridge:
    """One paho-mqtt 2.x client on its own network thread (``ClientLoop``: epoll, no
    descriptor ceiling; reconnects with capped exponential backoff and full jitter).

    With ``share_group`` (one of several replicas on an MQTT v5 broker) it connects with
    MQTT v5, a persistent session (``SESSION_EXPIRY_S``) and its own client id, and
    subscribes to the device topics as ``$share/GROUP/...``: the broker hands each device
    message to one replica of the group. It then re-publishes the current instructions only
    when told (``republish_current``, by the replica that takes the leader lease), never on
    connect, so a replica joining cannot re-publish an instruction the leader just
    replaced. Without it: MQTT 3.1.1 (the embedded amqtt broker), plain subscriptions."""

    revoked: Callable[[str], bool] | None = None
    """Whether a device is revoked (``RevocationList.is_revoked``): its messages are dropped
    before they are parsed, counted in ``edgefleet_reports_revoked_dropped`` and logged."""

    _batch_thread: int | None = None  # the thread inside ReportIngest's batch transaction

    is_leader: Callable[[], bool] | None = None
    """Whether this replica holds the leader lease (``Lease.is_leader``): retention
    (``prune``) runs only there. None: a single server, always."""

    def __init__(self, *, registry: Registry, bundle_path: Callable[[str], Path], host: str,
                 delta_file: Callable[[str], Path | None] = lambda sha: None,
                 port: int, password: str, username: str = SERVER_USERNAME,
                 max_window: int = 8, shadow_store: RolloutStore | None = None,
                 limits: TelemetryLimits | None = None,
                 metrics: ServerMetrics | None = None,
                 reconnect: Backoff | None = None, tls: ServerTls | None = None,
                 report_book: ReportBook | None = None, share_group: str | None = None,
                 client_id: str | None = None) -> None:
        self._registry = registry
        self._book = report_book or ReportBook()  # device-signed reports (report_verify)
        self._verifier = ReportVerifier(registry=registry, book=self._book)
        self._rejections = RejectionLog()
        self.limits = limits or TelemetryLimits()
        self.metrics = metrics or ServerMetrics()
        self._limiter = DeviceRateLimiter(self.limits)
        self._log_throttle = LogThrottle()
        self._ingest = ReportIngest(prepare=self.prepare, store=self.store,
                                    publish_ack=self._publish_ack,
                                    prune=self.prune, limits=self.limits,
                                    metrics=self.metrics,
                                    batch_transaction=self._batch_transaction,
                                    warm=self.warm)
        self._shadow_store = shadow_store
        self._bundle_path = bundle_path
        self._delta_file = delta_file  # cached deltas (fleet_server.delta_store)
        self._host, self._port = host, port
        self._max_window = max_window
        self.stats: collections.Counter[str] = collections.Counter()
        self._connected = threading.Event()
        self._share_group = share_group
        client_id = client_id or bridge_client_id(password)
        if share_group is None:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                 clean_session=False)
        else:
            # acknowledged once stored: a replica killed with messages in its ingest queue
            # gets them again from its session when it comes back (same replica id)
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                 protocol=mqtt.MQTTv5, manual_ack=True)
        client.username_pw_set(username, password)
        if tls is not None:  # the broker must chain to the fleet CA; we show our client cert
            client.tls_set(ca_certs=str(tls.ca_bundle), certfile=str(tls.client_cert),
                           keyfile=str(tls.client_key), cert_reqs=ssl.CERT_REQUIRED,
                           tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        self._loop = ClientLoop(client, backoff=reconnect or Backoff(), name="mqtt-bridge")

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, *, wait_s: float = 10.0) -> None:
        self.backfill_sent()
        self._ingest.start()
        if self._share_group is None:
            self._client.connect_async(self._host, self._port, keepalive=30)
        else:  # v5: keep the session (its shared subscriptions, queued QoS 1) across drops
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            # the broker has at most a queue's worth unacknowledged in flight to us: the
            # ingest queue never fills, so the network thread never blocks on it (keepalive)
            props.ReceiveMaximum = max(1, min(65535, self.limits.queue_messages))
            self._client.connect_async(self._host, self._port, keepalive=30,
                                       clean_start=False, properties=props)
        self._loop.start()
        if not self._connected.wait(wait_s):
            log.warning("MQTT bridge not connected to %s:%s yet; retrying in background",
                        self._host, self._port)

    def backfill_sent(self) -> None:
        """A report book new to an existing registry (a server upgraded to signed reports)
        learns every bundle a deployment sent each device before: its targets got an
        instruction naming the deployment's bundle (as bundle or shadow candidate)."""
        if self._book.has_sent():
            return
        self._book.record_sent((str(t["device_id"]), str(d["bundle_id"]))
                               for d in self._registry.list_deployments()
                               for t in d["targets"] if d.get("bundle_id"))

    def stop(self) -> None:
        """Disconnect, store what is queued (bounded wait), then end the network thread
        (which may be waiting to queue one more message until the ingest stops)."""
        self._loop.release()
        self._client.disconnect()
        self._ingest.stop()
        self._loop.stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            log.error("MQTT bridge refused by broker: %s", reason)
            return
        for topic in self.subscriptions():
            client.subscribe(topic, qos=1)
        if self._share_group is None:
            # amqtt keeps retained messages in memory: re-publish every current instruction
            self.republish_current()
        self._connected.set()
        log.info("MQTT bridge connected to %s:%s%s", self._host, self._port,
                 f" (MQTT v5, shared group {self._share_group})" if self._share_group else "")

    def subscriptions(self) -> list[str]:
        """The device->server topic filters, in the shared form with a ``share_group``."""
        if self._share_group is None:
            return list(SERVER_SUBSCRIPTIONS)
        return [f"$share/{self._share_group}/{t}" for t in SERVER_SUBSCRIPTIONS]

    def republish_current(self) -> int:
        """Publish every device's current instruction again (retained); returns how many."""
        current = self._registry.desired_envelopes()
        self._book.record_sent((d, sha) for d, env in current for sha in instruction_hashes(env))
        for device_id, envelope in current:
            self._client.publish(DeviceTopics(device_id).desired, envelope, qos=1, retain=True)
        return len(current)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self._connected.clear()

    # -- outgoing -------------------------------------------------------------------------
    def publish_instruction(self, device_id: str, envelope: bytes) -> None:
        """Publish a signed instruction retained, QoS 1 (re-sent on every reconnect); its
        bundles become ones the device's signed reports may name."""
        self._book.record_sent((device_id, sha) for sha in instruction_hashes(envelope))
        self._client.publish(DeviceTopics(device_id).desired, envelope, qos=1, retain=True)

    def _publish_ack(self, topic: str, payload: bytes) -> None:
        """A ``ReportAck``: QoS 1, not retained (the device re-sends what stays unconfirmed)."""
        self._client.publish(topic, payload, qos=1)

    # -- incoming -------------------------------------------------------------------------
    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """Network thread: rate-limit reports before parsing, then queue (may block)."""
        payload = bytes(msg.payload)
        ack = self._acker(msg)
        try:
            device_id, kind = parse_device_topic(msg.topic)
        except ProtocolError as e:
            self._reject(msg.topic, e)
            ack()
            return
        if kind in REPORT_KINDS and not self._limiter.allow(device_id, len(payload)):
            self.stats["rate_limited"] += 1
            self.metrics.rate_limited.labels(kind).inc()
            self.metrics.rate_limited_bytes.inc(len(payload))
            self._throttled_log(logging.WARNING, "rate limit: dropped a %s of %d bytes from %s",
                                kind, len(payload), device_id)
            ack()
            return
        self._ingest.offer(msg.topic, payload, ack)

    def _acker(self, msg: mqtt.MQTTMessage) -> Callable[[], None]:
        """The acknowledgement of ``msg`` (manual with a ``share_group``: after storage)."""
        if self._share_group is None or msg.qos == 0:
            return _no_ack
        mid, qos, client = msg.mid, msg.qos, self._client

        def ack() -> None:
            client.ack(mid, qos)
        return ack

    @contextmanager
    def _batch_transaction(self) -> Iterator[None]:
        """One registry transaction for a slice of an ingest batch, holding the stores'
        locks first (as their methods do), so no thread waits on the database for the
        transaction while holding a lock the ingest worker needs."""
        store = self._shadow_store
        with self._registry.lock, (store.lock if store is not None else nullcontext()), \
                self._registry.report_batch():
            self._batch_thread = threading.get_ident()
            try:
                yield
            finally:
                self._batch_thread = None

    def _guarded(self, what: str, job: Callable[[], _T]) -> _T | None:
        """Ingest worker: a bug in a handler must not end the worker; a database error
        inside the batch transaction goes up (``ReportIngest`` stores the slice again one
        by one: the transaction is lost, e.g. a deadlock between replicas on PostgreSQL)."""
        try:
            return job()
        except DatabaseError:
            if self._batch_thread == threading.get_ident():
                raise
            self.stats["handler_errors"] += 1
            allowed, _ = self._log_throttle.allow()
            if allowed:
                log.exception("database error handling %s", what)
            return None
        except Exception:
            self.stats["handler_errors"] += 1
            allowed, _ = self._log_throttle.allow()
            if allowed:
                log.exception("error handling %s", what)
            return None

    def handle(self, topic: str, payload: bytes) -> tuple[str, int] | None:
        """Process one message from a device topic (public for tests and simulators).

        Returns ``(device_id, seq)`` for a report that is now stored (or already was)."""
        report = self.prepare(topic, payload)
        return None if report is None else self.store([report])[0]

    def warm(self, topics: list[str]) -> None:
        """Ingest worker, before it prepares a batch: the public keys of the batch's
        devices that are not cached, in one registry query (``ReportVerifier.preload``)."""
        devices = set()
        for topic in topics:
            try:
                devices.add(parse_device_topic(topic)[0])
            except ProtocolError:
                continue  # refused when prepared
        self._verifier.preload(devices)

    def prepare(self, topic: str, payload: bytes) -> Report | None:
        """Ingest worker, outside any transaction: the verified report of a message (None
        for anything else: dropped, refused and counted, or a chunk request, answered
        here)."""
        return self._guarded(topic, lambda: self._prepare(topic, payload))

    def _prepare(self, topic: str, payload: bytes) -> Report | None:
        try:
            device_id, kind = parse_device_topic(topic)
            if self.revoked is not None and self.revoked(device_id):
                self.stats["dropped_revoked"] += 1
                self.metrics.revoked_dropped.labels(kind).inc()
                self._throttled_log(logging.WARNING, "dropped a %s message from revoked "
                                    "device %s", kind, device_id)
                return None
            if kind in ("state", "telemetry", "events", "shadow"):
                if kind == "state" and not payload:  # a cleared retained message
                    return None
                return self._open_report(device_id, kind, payload)
            if kind == "chunks/req":
                self._on_chunk_request(device_id, ChunkRequest.from_bytes(payload))
            else:
                self.stats["dropped_unexpected_topic"] += 1
        except ProtocolError as e:
            self._reject(topic, e)
        return None

    def _open_report(self, device_id: str, kind: str, envelope: bytes) -> Report | None:
        """A device-signed report, verified (``report_verify``); a refused one is counted by
        reason, logged once per device and reason a minute, and None."""
        try:
            return self._verifier.open(device_id, kind, envelope)
        except ReportRejected as e:
            self.stats[f"rejected_{e.reason}"] += 1
            self.metrics.reports_rejected.labels(e.reason).inc()
            if self._rejections.should_log(device_id, e.reason):
                log.warning("refused a %s report on %s's topic: %s", kind, device_id,
                            str(e)[:300])
            return None

    def store(self, reports: list[Report]) -> list[tuple[str, int] | None]:
        """Ingest worker (in its batch transaction): store verified reports, each device's
        in the order they came, the devices in id order (replicas storing reports of the
        same devices then lock their rows in the same order, which keeps PostgreSQL's
        deadlocks between them rare); the telemetry among them in one registry call. For
        each report, in ``reports``' order, ``(device_id, seq)`` of a report now stored (or
        already stored: confirmed again), else None."""
        keys: list[tuple[str, int] | None] = [None] * len(reports)
        telemetry: list[tuple[int, Telemetry]] = []
        for at in sorted(range(len(reports)), key=lambda i: reports[i].device_id):  # stable
            report = reports[at]
            if isinstance(report, Telemetry):
                telemetry.append((at, report))
            else:
                keys[at] = self._guarded(type(report).__name__,
                                         partial(self._store_one, report))
        if telemetry:
            new = self._guarded("telemetry", lambda: self._registry.add_telemetry_many(
                [(t.device_id, t.seq, t.ts, t.to_dict()) for _, t in telemetry]))
            if new is not None:  # None: a database error outside a batch, counted above
                for (at, t), fresh in zip(telemetry, new, strict=True):
                    self._count("telemetry", fresh)
                    keys[at] = (t.device_id, t.seq)
        return keys

    def _store_one(self, report: Report) -> tuple[str, int] | None:
        if isinstance(report, DeviceState):
            self._on_state(report.device_id, report)
            self._verifier.state_kept(report)
        elif isinstance(report, Event):
            return self._on_event(report.device_id, report)
        elif isinstance(report, ShadowReport):
            return self._on_shadow(report.device_id, report)
        return None

    def _reject(self, topic: str, error: ProtocolError) -> None:
        """One log line per refused message (throttled), never a traceback."""
        self.stats["dropped_malformed"] += 1
        self.metrics.rejected.inc()
        self._throttled_log(logging.WARNING, "dropped message on %s: %s",
                            topic[:200], str(error)[:300])

    def _throttled_log(self, level: int, fmt: str, *args: Any) -> None:
        allowed, suppressed = self._log_throttle.allow()
        if allowed:
            if suppressed:
                fmt += " (%d similar lines suppressed)"
                args = (*args, suppressed)
            log.log(level, fmt, *args)

    def prune(self) -> None:
        """Retention (``TelemetryLimits.keep_rows`` / ``keep_days``) of telemetry and events,
        and ``keep_days`` of the instruction log, counted in metrics."""
        if self.is_leader is not None and not self.is_leader():
            return
        older_than = time.time() - self.limits.keep_days * 86400
        for table in ("telemetry", "events"):
            deleted = self._registry.prune_reports(table=table, keep_rows=self.limits.keep_rows,
                                                   older_than=older_than)
            if deleted:
                self.metrics.pruned.labels(table).inc(deleted)
                log.info("retention: pruned %d %s rows", deleted, table)
        deleted = self._registry.prune_instruction_log(older_than=older_than)
        if deleted:
            self.metrics.pruned.labels("instruction_log").inc(deleted)
            log.info("retention: forgot %d signed instructions issued before %d days ago",
                     deleted, self.limits.keep_days)

    def _check_sender(self, topic_device: str, payload_device: str) -> None:
        if topic_device != payload_device:
            raise ProtocolError(
                f"payload names device {payload_device!r} but arrived on {topic_device!r}")
        if not self._registry.device_exists(device_id=topic_device):
            raise ProtocolError(f"unknown device {topic_device!r}")

    # the four reports below come verified (``_on_report``): their device is enrolled and
    # is the one they name, so they are not checked again here
    def _on_state(self, device_id: str, state: DeviceState) -> None:
        active = state.active
        self._registry.update_device_state(
            device_id=device_id, online=state.status == "online", ts=time.time(),
            state=state.to_dict(),
            active_bundle=f"{active.name}@{active.version}" if active else None,
            delegate=active.delegate if active else None)
        if state.install is not None:
            self._registry.update_target_state(
                device_id=device_id, instruction_seq=state.install.seq,
                state=state.install.state, error=state.install.error)
        self.stats["state"] += 1

    def _count(self, kind: str, stored: bool) -> None:
        if stored:
            self.stats[kind] += 1
            self.metrics.stored.labels(kind).inc()
        else:
            self.stats[f"{kind}_duplicates" if kind != "events" else "event_duplicates"] += 1
            self.metrics.duplicates.labels(kind).inc()

    def _on_event(self, device_id: str, event: Event) -> tuple[str, int]:
        stored = self._registry.add_event(device_id=device_id, seq=event.seq, ts=event.ts,
                                          kind=event.kind, data=event.to_dict())
        if stored and event.kind == "install" and event.instruction_seq and event.state:
            self._registry.update_target_state(
                device_id=device_id, instruction_seq=event.instruction_seq,
                state=event.state, error=event.detail or None)
        self._count("events", stored)
        return device_id, event.seq

    def _on_shadow(self, device_id: str, report: ShadowReport) -> tuple[str, int] | None:
        if self._shadow_store is None:
            self.stats["shadow_unstored"] += 1
            return None
        stored = self._shadow_store.add_shadow_report(
            device_id=device_id, seq=report.seq, ts=report.ts,
            candidate_sha256=report.candidate_sha256, data=report.to_dict())
        self._count("shadow", stored)
        return device_id, report.seq

    def _on_chunk_request(self, device_id: str, req: ChunkRequest) -> None:
        self._check_sender(device_id, req.device_id)
        for frame in self.chunk_frames(device_id, req):
            self._client.publish(DeviceTopics(device_id).chunks, frame, qos=1)

    def chunk_frames(self, device_id: str, req: ChunkRequest) -> list[bytes]:
        """The frames answering ``req``; [] (and counted) when the device may not have them."""
        device = self._registry.get_device(device_id=device_id)
        if not may_fetch(device, req.sha256):
            self.stats["chunk_requests_refused"] += 1
            log.info("refused chunks of %s to %s: not in its current instruction",
                     req.sha256[:12], device_id)
            return []
        try:
            bundle = self._registry.find_bundle(key=req.sha256)
            path, size, chunk_size = (self._bundle_path(req.sha256), int(bundle["size"]),
                                      int(bundle["chunk_size"]))
        except NotFoundError:
            delta = self._delta_file(req.sha256)  # a delta its instruction offers
            if delta is None:
                self.stats["chunk_requests_refused"] += 1
                return []
            path, size, chunk_size = delta, delta.stat().st_size, DEFAULT_CHUNK_SIZE
        total = chunk_count(size, chunk_size)
        count = min(req.count, self._max_window)
        frames = []
        for index in range(req.index, min(req.index + count, total)):
            data = read_chunk(path, index, chunk_size)
            frames.append(encode_chunk_frame(req.sha256, index, total, data))
        self.stats["chunks_served"] += len(frames)
        return frames


def _no_ack() -> None:
    """paho acknowledged the message itself (MQTT 3.1.1 bridge, or QoS 0)."""


def bridge_client_id(password: str, replica: str | None = None) -> str:
    """Stable per server (derived from its MQTT secret) and unique per replica: with a
    persistent session the broker keeps the bridge's subscriptions and queues device messages
    while the bridge is away (e.g. a broker restart the devices reconnect to first), so no
    telemetry is lost."""
    base = SERVER_CLIENT_PREFIX + hashlib.sha256(password.encode()).hexdigest()[:12]
    return base if replica is None else f"{base}-{replica}"


def may_fetch(device: dict[str, Any], sha256: str) -> bool:
    """Whether the device's current instruction names ``sha256`` as its bundle, its shadow
    candidate or its bundle's delta: the bytes it may ask for (MQTT chunks, HTTP ranges)."""
    return (device.get("desired_sha") == sha256 or _shadows(device, sha256)
            or _shadows(device, sha256, "delta"))


def _shadows(device: dict[str, Any], sha256: str, key: str = "shadow") -> bool:
    """Whether the device's current instruction names ``sha256`` as its shadow candidate
    (or, with ``key="delta"``, as its bundle's delta)."""
    envelope = device.get("desired_envelope")
    if not envelope:
        return False
    try:
        payload = json.loads(base64.b64decode(json.loads(envelope)["payload"]))
        return bool((payload.get(key) or {}).get("sha256") == sha256)
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
