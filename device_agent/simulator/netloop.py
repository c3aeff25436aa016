"""One network thread for every simulated device: a ``selectors`` (epoll) loop over paho's
external-loop API.

paho-mqtt's own loop (``loop_start``) runs a thread per client and waits with
``select.select``, which cannot watch a descriptor numbered 1024 or above; a process with a
few hundred clients (or one that already holds many files) passes that and later clients
never connect. Here one thread waits on a ``selectors.DefaultSelector`` for all of them and
calls ``loop_read`` / ``loop_write`` when their sockets are ready and ``loop_misc`` (keepalive
pings) once a second. Sockets are (un)registered from paho's ``on_socket_open`` /
``on_socket_close`` callbacks and write interest follows ``on_socket_register_write`` /
``on_socket_unregister_write``, re-checked with ``want_write()`` after every read and write
(those callbacks can race with a publish from another thread).

Connections are started on the loop thread, a bounded number per pass, with a non-blocking
TCP connect (:class:`NonBlockingClient`), and lost ones are retried with capped exponential
backoff and jitter: the application owns reconnection.

The fleet server's one MQTT client runs on a loop of its own (``fleet_server/mqtt_loop.py``):
the two applications never import each other, and that loop drives a single client whose
blocking connect has its own thread, without the pacing and per-client bookkeeping here.
"""

from __future__ import annotations

import collections
import errno
import functools
import heapq
import logging
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

MISC_INTERVAL_S = 1.0


class NonBlockingClient(mqtt.Client):
    """A paho client whose TCP connect does not block: the socket is returned while the
    handshake is in progress, paho queues CONNECT, and the loop writes it once the socket
    is writable (a refused connect surfaces there as a lost connection)."""

    def _create_socket_connection(self) -> socket.socket:
        family, kind, proto, _, addr = socket.getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        err = sock.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            sock.close()
            raise OSError(err, f"connect to {addr}: {errno.errorcode.get(err, err)}")
        return sock


class _Conn:
    """The loop's record of one client (fields other than ``wanted`` are loop-thread only)."""

    __slots__ = ("client", "wanted", "sock", "events", "delay", "queued")

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client
        self.wanted = True
        self.sock: Any = None
        self.events = 0
        self.delay = 0.0
        self.queued = False


class NetLoop:
    """Drives many paho clients from one thread. ``add`` a client after ``connect_async``;
    ``release`` one before a wanted ``disconnect``; ``drop`` one to cut it off without a
    DISCONNECT (the broker then publishes its last will)."""

    def __init__(self, *, reconnect_min_s: float = 1.0, reconnect_max_s: float = 5.0,
                 connects_per_pass: int = 50,
                 stats: collections.Counter[str] | None = None) -> None:
        self._sel = selectors.DefaultSelector()
        self._sel_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._woken = False
        self._conns: dict[int, _Conn] = {}  # id(client) -> record
        self._pending: collections.deque[_Conn] = collections.deque()
        self._timers: list[tuple[float, int, _Conn]] = []
        self._dirty: set[_Conn] = set()
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._lock = threading.Lock()
        self._min, self._max = reconnect_min_s, reconnect_max_s
        self._per_pass = connects_per_pass
        self.stats: collections.Counter[str] = stats if stats is not None else \
            collections.Counter()
        self._rng = random.Random()  # noqa: S311 - reconnect jitter, not security
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-netloop", daemon=True)

    # -- public, any thread -------------------------------------------------------------------
    def start(self) -> NetLoop:
        self._thread.start()
        return self

    def add(self, client: mqtt.Client) -> None:
        """Take over ``client`` (``connect_async`` already called) and connect it soon."""
        conn = _Conn(client)
        client.on_socket_open = lambda c, u, sock: self._opened(conn, sock)
        client.on_socket_close = lambda c, u, sock: self._closed(conn, sock)
        client.on_socket_register_write = lambda c, u, sock: self._mark(conn)
        client.on_socket_unregister_write = lambda c, u, sock: self._mark(conn)
        with self._lock:
            self._conns[id(client)] = conn
        self._call_soon(lambda: self._queue_connect(conn))

    def release(self, client: mqtt.Client) -> None:
        """Stop reconnecting ``client``: call before its ``disconnect()``; the loop still
        writes the DISCONNECT and paho then closes the socket."""
        conn = self._conns.get(id(client))
        if conn is not None:
            conn.wanted = False

    def drop(self, client: mqtt.Client) -> None:
        """Close ``client``'s socket without a DISCONNECT and never reconnect it."""
        conn = self._conns.get(id(client))
        if conn is None:
            return
        conn.wanted = False
        self._call_soon(lambda: self._cut(conn))

    def stop(self, flush_s: float = 5.0) -> None:
        """Give released clients up to ``flush_s`` to write their DISCONNECT, then end the
        thread and close every socket left."""
        for conn in list(self._conns.values()):
            conn.wanted = False
        deadline = time.monotonic() + flush_s
        while self._thread.is_alive() and time.monotonic() < deadline and any(
                c.sock is not None and c.client.want_write() for c in list(self._conns.values())):
            time.sleep(0.02)
        self._stop.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(10)
        for conn in list(self._conns.values()):
            if conn.sock is not None:
                self._cut(conn)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def connected(self) -> int:
        return sum(c.client.is_connected() for c in list(self._conns.values()))

    # -- callbacks from paho (loop thread, or a publisher's thread for write interest) ---------
    def _opened(self, conn: _Conn, sock: Any) -> None:
        conn.sock, conn.events = sock, selectors.EVENT_READ
        with self._sel_lock:
            try:
                self._sel.register(sock, selectors.EVENT_READ, conn)
            except KeyError:  # a stale entry for a reused descriptor number
                self._sel.modify(sock, selectors.EVENT_READ, conn)
        self._mark(conn)

    def _closed(self, conn: _Conn, sock: Any) -> None:
        if conn.sock is sock:
            conn.sock, conn.events = None, 0
        with self._sel_lock:
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass
        if conn.wanted and not self._stop.is_set():
            self.stats["reconnects_scheduled"] += 1
            self._call_soon(lambda: self._schedule_reconnect(conn))

    def _mark(self, conn: _Conn) -> None:
        with self._lock:
            self._dirty.add(conn)
        if threading.current_thread() is not self._thread:
            self._wake()

    # -- loop-thread internals -----------------------------------------------------------------
    def _call_soon(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._calls.append(fn)
        self._wake()

    def _wake(self) -> None:
        if self._woken:
            return
        self._woken = True
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    def _queue_connect(self, conn: _Conn) -> None:
        if conn.wanted and not conn.queued and conn.sock is None:
            conn.queued = True
            self._pending.append(conn)

    def _schedule_reconnect(self, conn: _Conn) -> None:
        conn.delay = min(self._max, max(self._min, conn.delay * 2))
        due = time.monotonic() + conn.delay * (0.5 + self._rng.random())
        heapq.heappush(self._timers, (due, id(conn), conn))

    def _connect(self, conn: _Conn) -> None:
        conn.queued = False
        if not conn.wanted or conn.sock is not None:
            return
        try:
            conn.client.reconnect()
            self.stats["connects"] += 1
        except OSError as e:
            self.stats["connect_errors"] += 1
            log.debug("connect failed: %s", e)
            self._schedule_reconnect(conn)

    def _cut(self, conn: _Conn) -> None:
        sock = conn.sock
        if sock is None:
            return
        conn.sock, conn.events = None, 0
        with self._sel_lock:
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass
        sock.close()

    def _sync(self, conn: _Conn) -> None:
        """Make the selector's interest match ``want_write()`` now."""
        if conn.sock is None:
            return
        events = selectors.EVENT_READ | (
            selectors.EVENT_WRITE if conn.client.want_write() else 0)
        if events != conn.events:
            conn.events = events
            with self._sel_lock:
                try:
                    self._sel.modify(conn.sock, events, conn)
                except (KeyError, ValueError, OSError):
                    pass

    def _guard(self, conn: _Conn, what: Callable[[], Any]) -> None:
        try:
            what()
        except Exception:  # noqa: BLE001 - one device's bug must not stop the fleet's loop
            self.stats["callback_errors"] += 1
            log.exception("simulated device %s failed", conn.client._client_id)

    def _run(self) -> None:
        next_misc = time.monotonic() + MISC_INTERVAL_S
        while not self._stop.is_set():
            with self._lock:
                calls, self._calls = self._calls, collections.deque()
            for fn in calls:
                fn()
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                self._queue_connect(heapq.heappop(self._timers)[2])
            for _ in range(min(self._per_pass, len(self._pending))):
                conn = self._pending.popleft()
                self._guard(conn, functools.partial(self._connect, conn))
            with self._lock:
                dirty, self._dirty = self._dirty, set()
            for conn in dirty:
                self._sync(conn)
            if now >= next_misc:
                next_misc = now + MISC_INTERVAL_S
                self._misc()
            timeout = 0.0 if (self._pending or self._calls or self._dirty) else min(
                next_misc - now, (self._timers[0][0] - now) if self._timers else 1.0)
            for key, mask in self._sel.select(max(0.0, timeout)):
                conn = key.data
                if conn is None:
                    self._drain_wake()
                    continue
                if mask & selectors.EVENT_READ and conn.sock is not None:
                    self._guard(conn, functools.partial(self._read, conn))
                if mask & selectors.EVENT_WRITE and conn.sock is not None:
                    self._guard(conn, conn.client.loop_write)
                self._sync(conn)

    @staticmethod
    def _read(conn: _Conn) -> None:
        """Read what is ready, and what TLS already decrypted into its buffer (the
        selector cannot see those bytes)."""
        conn.client.loop_read()
        sock = conn.client.socket()
        while sock is not None and getattr(sock, "pending", lambda: 0)() > 0:
            if conn.client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                break
            sock = conn.client.socket()

    def _drain_wake(self) -> None:
        self._woken = False
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _misc(self) -> None:
        """Keepalive for every client, reset backoff of the connected, and re-check write
        interest as a safety net."""
        for conn in list(self._conns.values()):
            if conn.sock is None:
                continue
            self._guard(conn, conn.client.loop_misc)
            if conn.client.is_connected():
                conn.delay = 0.0
            self._sync(conn)
