"""The network thread of the server's one MQTT client: paho's external-loop API driven by a
``selectors.DefaultSelector`` (epoll on Linux), and reconnection with capped exponential
backoff and full jitter.

paho's own ``loop_start`` waits with ``select.select``, which cannot watch a descriptor
numbered 1,024 or above: a server that holds many files, sockets or HTTP connections would
lose its broker connection for good. Here the thread waits on the selector for the client's
socket and a wake-up socket (poked when another thread queues a packet, so write interest
follows ``want_write()``), calls ``loop_read`` / ``loop_write`` when the socket is ready and
``loop_misc`` (keepalive) once a second.

The device simulator (``device_agent/simulator/netloop.py``) drives hundreds of clients from
one thread with non-blocking, paced connects; this loop drives exactly one, whose blocking
connect runs on its own thread, and owns the server's reconnect policy (docs/operations.md,
"Broker connection").
"""

from __future__ import annotations

import logging
import random
import selectors
import socket
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

MISC_INTERVAL_S = 1.0


class Backoff:
    """Capped exponential backoff with full jitter: wait ``n`` (from 0) is drawn uniformly
    from ``[0, min(cap_s, base_s * 2**n)]``; ``reset()`` once connected."""

    def __init__(self, *, base_s: float = 0.5, cap_s: float = 30.0,
                 rng: random.Random | None = None) -> None:
        if not 0 < base_s <= cap_s:
            raise ValueError(f"backoff needs 0 < base_s <= cap_s, got {base_s} and {cap_s}")
        self.base_s, self.cap_s = base_s, cap_s
        self.attempt = 0
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter, not security

    def ceiling_s(self) -> float:
        return min(self.cap_s, self.base_s * 2 ** min(self.attempt, 60))

    def next_s(self) -> float:
        delay = self._rng.uniform(0.0, self.ceiling_s())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


class ClientLoop:
    """Runs one paho client (``connect_async`` already called) on a thread of its own.

    ``release()`` before a wanted ``disconnect()`` (no reconnect after it), then ``stop()``.
    ``stats`` counts ``connects``, ``connect_errors`` and ``connection_losses``."""

    def __init__(self, client: mqtt.Client, *, backoff: Backoff | None = None,
                 name: str = "mqtt-loop") -> None:
        self._client = client
        self.backoff = backoff or Backoff()
        self.stats = {"connects": 0, "connect_errors": 0, "connection_losses": 0}
        self._wanted = True
        self._stopping = threading.Event()
        self._retry_at = 0.0
        self._sel = selectors.DefaultSelector()
        self._poke_r, self._poke_w = socket.socketpair()
        for s in (self._poke_r, self._poke_w):
            s.setblocking(False)
        self._sel.register(self._poke_r, selectors.EVENT_READ)
        self._watched: Any = None
        client.on_socket_register_write = lambda *_: self._poke()
        client.on_socket_unregister_write = lambda *_: self._poke()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> ClientLoop:
        self._thread.start()
        return self

    def release(self) -> None:
        self._wanted = False
        self._poke()

    def stop(self, flush_s: float = 5.0) -> None:
        """Give queued packets (a DISCONNECT) up to ``flush_s`` to go out, then end the
        thread and close what is left."""
        self.release()
        deadline = time.monotonic() + flush_s
        while (self._thread.is_alive() and time.monotonic() < deadline
               and self._client.socket() is not None and self._client.want_write()):
            time.sleep(0.02)
        self._stopping.set()
        self._poke()
        if self._thread.is_alive():
            self._thread.join(10)
        sock = self._client.socket()
        if sock is not None:
            sock.close()
        self._sel.close()
        self._poke_r.close()
        self._poke_w.close()

    # -- the loop thread ------------------------------------------------------------------
    def _poke(self) -> None:
        if threading.current_thread() is self._thread:
            return  # the loop re-reads want_write() before it waits again
        try:
            self._poke_w.send(b"!")
        except OSError:  # full (a wake-up is already pending) or closed at stop
            pass

    def _run(self) -> None:
        next_misc = time.monotonic() + MISC_INTERVAL_S
        while not self._stopping.is_set():
            now = time.monotonic()
            sock = self._client.socket()
            self._watch(sock)
            if sock is None and self._wanted and now >= self._retry_at:
                self._connect()
                continue
            if now >= next_misc:
                next_misc = now + MISC_INTERVAL_S
                if sock is not None:
                    self._client.loop_misc()
                if self._client.is_connected():
                    self.backoff.reset()
            if sock is not None:
                wait = next_misc - now
            else:
                wait = self._retry_at - now if self._wanted else MISC_INTERVAL_S
            for key, mask in self._sel.select(max(0.0, min(wait, MISC_INTERVAL_S))):
                if key.fileobj is self._poke_r:
                    self._drain_pokes()
                    continue
                if mask & selectors.EVENT_READ:
                    self._read()
                if mask & selectors.EVENT_WRITE and self._client.socket() is not None:
                    self._client.loop_write()
            if sock is not None and self._client.socket() is None:
                self._lost()

    def _read(self) -> None:
        """Read what is ready, and what TLS has already decrypted into its buffer (the
        selector cannot see those bytes: the socket itself has nothing more to read)."""
        self._client.loop_read()
        sock = self._client.socket()
        while sock is not None and getattr(sock, "pending", lambda: 0)() > 0:
            if self._client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                break
            sock = self._client.socket()

    def _watch(self, sock: Any) -> None:
        """Selector interest: the current socket, for writing too while packets wait."""
        if self._watched is not None and self._watched is not sock:
            try:
                self._sel.unregister(self._watched)
            except (KeyError, ValueError, OSError):
                pass
            self._watched = None
        if sock is None:
            return
        events = selectors.EVENT_READ | (
            selectors.EVENT_WRITE if self._client.want_write() else 0)
        if self._watched is None:
            self._sel.register(sock, events)
            self._watched = sock
        elif self._sel.get_key(sock).events != events:
            self._sel.modify(sock, events)

    def _drain_pokes(self) -> None:
        try:
            while self._poke_r.recv(512):
                pass
        except OSError:
            pass

    def _connect(self) -> None:
        try:
            self._client.reconnect()
            self.stats["connects"] += 1
        except OSError as e:  # refused, unreachable, timed out, TLS failure
            self.stats["connect_errors"] += 1
            delay = self.backoff.next_s()
            self._retry_at = time.monotonic() + delay
            level = logging.ERROR if isinstance(e, ssl.SSLError) else logging.INFO
            log.log(level, "MQTT connect failed (%s); next try in %.1f s", e, delay)

    def _lost(self) -> None:
        if not self._wanted:
            return
        self.stats["connection_losses"] += 1
        delay = self.backoff.next_s()
        self._retry_at = time.monotonic() + delay
        log.warning("MQTT connection lost; reconnecting in %.1f s", delay)
