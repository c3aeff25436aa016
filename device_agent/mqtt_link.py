"""The device's MQTT connection (paho-mqtt 2.x), with our own reconnect loop.

Client id = device id, clean_session False (MQTT 3.1.1), last will = offline DeviceState
(retained, QoS 1). Subscriptions are made again in every on_connect. Reconnection is our
loop: exponential backoff 1 s doubling to 60 s with full jitter (paho's own
``reconnect_delay_set`` has no jitter). Outbox records are (re)published on every connect.
A report (a record with a key) is deleted only when the server confirms it on the ``ack``
topic (``ReportAck``); one not confirmed ``ack_timeout_s`` after its PUBACK is sent again.
At most ``max_inflight`` records are published and unconfirmed at a time. A record without
a key is deleted when the broker acknowledges it (the publication is_published()).
The PUBACK callback never blocks on our lock (paho holds its own lock while calling it).
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from device_agent.outbox import Outbox
from ota.acks import ReportAck
from ota.errors import ProtocolError

__all__ = ["LinkTls", "MqttLink", "backoff_delay"]

log = logging.getLogger(__name__)


def backoff_delay(attempt: int, base: float = 1.0, cap: float = 60.0,
                  rng: Callable[[float, float], float] = random.uniform) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return rng(0.0, min(cap, base * (2 ** min(attempt, 30))))


@dataclass(frozen=True)
class LinkTls:
    """MQTT over TLS: the broker must chain to ``ca_file`` (the pinned fleet CA bundle) and
    name this host; the device presents ``cert_file``/``key_file`` (its own certificate)."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        """A client context (hostname checked, TLS 1.2 or later) with the files loaded."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.reload(ctx)
        return ctx

    def reload(self, ctx: ssl.SSLContext) -> None:
        """Load the files again into ``ctx`` (a renewed certificate, a CA added by a
        rollover): the next handshake uses them."""
        ctx.load_verify_locations(cafile=str(self.ca_file))
        if self.cert_file is not None:
            ctx.load_cert_chain(str(self.cert_file),
                                str(self.key_file) if self.key_file else None)


def describe_connect_error(e: OSError, tls: LinkTls | None) -> str:
    """One line saying why a connect failed; a broker certificate that does not chain to
    the pinned CA is named as such."""
    if isinstance(e, ssl.SSLCertVerificationError) and tls is not None:
        return (f"the broker's certificate is not trusted: it does not chain to the pinned "
                f"fleet CA {tls.ca_file} or does not name this host ({e.verify_message})")
    return str(e)


@dataclass
class _Sent:
    info: mqtt.MQTTMessageInfo
    at: float
    key: int | None


class MqttLink:
    def __init__(
        self,
        *,
        device_id: str,
        host: str,
        port: int,
        username: str,
        password: str,
        will_topic: str,
        will_payload: bytes,
        subscriptions: tuple[str, ...],
        outbox: Outbox,
        on_message: Callable[[str, bytes], None],
        on_connected: Callable[[], None] | None = None,
        tls: LinkTls | None = None,
        keepalive: int = 30,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        ack_topic: str | None = None,
        ack_timeout_s: float = 30.0,
        max_inflight: int = 500,
    ) -> None:
        self.ack_topic = ack_topic
        self.ack_timeout_s, self.max_inflight = ack_timeout_s, max_inflight
        self.host, self.port = host, port
        self.subscriptions = subscriptions
        self.outbox = outbox
        self._on_message_cb = on_message
        self._on_connected_cb = on_connected or (lambda: None)
        self.keepalive = keepalive
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=device_id, clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.client.username_pw_set(username, password)
        self.tls = tls
        self._ssl_ctx: ssl.SSLContext | None = None
        if tls is not None:
            self._ssl_ctx = tls.context()
            self.client.tls_set_context(self._ssl_ctx)
            # paho writes a packet queued from another thread (publish_durable) on that
            # thread while this link's loop may be reading: two threads on one TLS
            # connection corrupt it. With this hook set, paho leaves every write to the
            # loop thread, which its socketpair wakes at once.
            self.client.on_socket_register_write = lambda *_: None
        self.last_error: str | None = None
        self.client.will_set(will_topic, will_payload, qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self._lock = threading.RLock()
        self._sent: dict[int, _Sent] = {}  # outbox seq -> its latest publication
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connects = 0

    # -- paho callbacks (network thread) ----------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            log.warning("MQTT connect refused: %s", reason)
            return
        self.last_error = None
        self.connects += 1
        for topic in self.subscriptions:
            client.subscribe(topic, qos=1)
        self.connected.set()
        with self._lock:
            self._sent.clear()
        self.flush()
        try:
            self._on_connected_cb()
        except Exception:
            log.exception("on_connected callback failed")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self.connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.ack_topic is not None and msg.topic == self.ack_topic:
            self._on_ack(bytes(msg.payload))
            return
        try:
            self._on_message_cb(msg.topic, bytes(msg.payload))
        except Exception:
            log.exception("message handler failed for %s", msg.topic)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        # paho calls this holding its own message lock, which publish() (in flush, under
        # self._lock) also takes: never wait for self._lock here. If a flush holds it, that
        # flush (or the next) reaps this acknowledgement.
        if self._lock.acquire(blocking=False):
            try:
                self._reap(acked_mid=mid)
            finally:
                self._lock.release()

    def _reap(self, acked_mid: int | None = None) -> None:
        """Delete the keyless records the broker has acknowledged (caller holds the lock).
        ``acked_mid``: the PUBACK being handled (paho marks it published only afterwards)."""
        for seq in [s for s, sent in self._sent.items() if sent.key is None
                    and (sent.info.mid == acked_mid or sent.info.is_published())]:
            del self._sent[seq]
            self.outbox.ack(seq)

    def _on_ack(self, payload: bytes) -> None:
        """The server stored these reports: delete them, then send what waits."""
        try:
            ack = ReportAck.from_bytes(payload)
        except ProtocolError as e:
            log.warning("ignored a malformed ReportAck: %s", e)
            return
        with self._lock:
            for seq in self.outbox.confirm(ack.seqs):
                self._sent.pop(seq, None)
        self.flush()

    # -- publishing --------------------------------------------------------------------

    def publish_durable(self, topic: str, payload: bytes, key: int | None = None) -> None:
        """Store in the outbox, then publish if connected (QoS 1). With ``key`` (the report's
        seq) the record stays until the server confirms it, else until the broker's PUBACK."""
        self.outbox.put(topic, payload, key)
        self.flush()

    def publish_retained(self, topic: str, payload: bytes) -> None:
        """Retained state: only the latest matters, so no outbox (re-sent on connect)."""
        if self.connected.is_set():
            self.client.publish(topic, payload, qos=1, retain=True)

    def publish_now(self, topic: str, payload: bytes, qos: int = 1) -> bool:
        if not self.connected.is_set():
            return False
        return self.client.publish(topic, payload, qos=qos).rc == mqtt.MQTT_ERR_SUCCESS

    def flush(self) -> None:
        """Publish the records not in flight, and again those whose confirmation is overdue,
        keeping at most ``max_inflight`` unconfirmed."""
        if not self.connected.is_set():
            return
        with self._lock:
            self._reap()
            now = time.monotonic()
            for seq in self.outbox.seqs():
                sent = self._sent.get(seq)
                if sent is not None and not self._overdue(sent, now):
                    continue
                if sent is None and len(self._sent) >= self.max_inflight:
                    break
                rec = self.outbox.read(seq)
                if rec is None:
                    continue
                info = self.client.publish(rec.topic, rec.payload, qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    break
                self._sent[seq] = _Sent(info, now, rec.key)
            self._reap()

    def _overdue(self, sent: _Sent, now: float) -> bool:
        return (sent.key is not None and sent.info.is_published()
                and now - sent.at >= self.ack_timeout_s)

    # -- the loop ---------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                if self.tls is not None and self._ssl_ctx is not None:
                    self.tls.reload(self._ssl_ctx)
                self.client.connect(self.host, self.port, keepalive=self.keepalive)
            except OSError as e:
                delay = backoff_delay(attempt, self.backoff_base, self.backoff_cap)
                self.last_error = describe_connect_error(e, self.tls)
                level = logging.ERROR if isinstance(e, ssl.SSLError) else logging.INFO
                log.log(level, "MQTT connect to %s:%s failed: %s; retry in %.1fs",
                        self.host, self.port, self.last_error, delay)
                attempt += 1
                self._stop.wait(delay)
                continue
            next_flush = time.monotonic() + 1.0
            while not self._stop.is_set():
                rc = self.client.loop(timeout=0.5)
                if self.connected.is_set():
                    attempt = 0
                    if time.monotonic() >= next_flush:  # re-send overdue reports
                        self.flush()
                        next_flush = time.monotonic() + 1.0
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    break
            self.connected.clear()
            if self._stop.is_set():
                break
            delay = backoff_delay(attempt, self.backoff_base, self.backoff_cap)
            attempt += 1
            self._stop.wait(delay)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edgefleet-mqtt", daemon=True)
        self._thread.start()

    def stop(self, final_state: tuple[str, bytes] | None = None) -> None:
        if final_state is not None and self.connected.is_set():
            info = self.client.publish(final_state[0], final_state[1], qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2)
            except (RuntimeError, ValueError):
                pass
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.client.disconnect()
        except Exception as e:  # closing anyway: a link that is already down is fine
            log.debug("disconnect on close: %s", e)
