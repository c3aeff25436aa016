"""Bounded ingestion of device messages: a queue, two worker threads, end-to-end acks,
retention.

The MQTT network thread ``offer``s each message; when ``queue_messages`` are waiting it
blocks, so the broker connection stops being read (back-pressure) instead of memory
growing. The check thread takes a batch, reads ahead what its checks need (``warm``: the
devices' keys in one query) and ``prepare``s each message (parse, signature check: CPU,
outside any transaction). The store thread ``store``s the prepared batches in order, in
lists (with ``batch_transaction`` one commit for many, in slices of at most ``TX_MAX_S``,
instead of one commit per write; the store writes a list of telemetry in a few
statements), while the check thread prepares the next one: at most two prepared batches
wait between them. The stored seqs are confirmed with one ``ReportAck`` per device
(``AckBatcher``: at once when nothing more is queued, else within ``ACK_DELAY_S``). A
message that was taken from the broker but not yet stored when the process dies is simply
never confirmed: the device still holds it and sends it again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from fleet_server.metrics import ServerMetrics
from fleet_server.telemetry_limits import TelemetryLimits
from ota.acks import ReportAck
from ota.topics import DeviceTopics

log = logging.getLogger(__name__)

BATCH = 256
"""Messages processed before the acks of the batch go out."""

TX_MAX_S = 0.02
"""A batch transaction commits after this long and the next messages start another one
``TX_GAP_S`` later: other threads wait at most about this long for the registry, and a
writer waiting in SQLite's busy handler (which retries every few ms, then every 100 ms)
finds the database free often enough (``batch_transaction``)."""
TX_GAP_S = 0.005

ACK_DELAY_S = 0.5
"""Longest a stored report waits for its ``ReportAck`` while more are queued (devices
re-send what stays unconfirmed after 30 s: ``MqttLink.ack_timeout_s``)."""

STORE_CHUNK = 128
"""Prepared messages handed to ``store`` at once (the deadline is checked between lists)."""

Key = tuple[str, int]
Prepare = Callable[[str, bytes], Any]
"""Check and parse one message (no database writes); None when there is nothing to store."""
Store = Callable[[list[Any]], list[Key | None]]
"""Store prepared messages, in order; for each, ``(device_id, seq)`` of a report now stored
(or already stored), else None."""
Publish = Callable[[str, bytes], None]
Prune = Callable[[], None]
Warm = Callable[[list[str]], None]
"""Before a batch is prepared, with its topics: read what its checks need at once (the
bridge reads the devices' public keys in one query)."""
Done = Callable[[], None]


class AckBatcher:
    """The seqs stored for each device, confirmed in one ``ReportAck`` per device at most
    ``ACK_DELAY_S`` after the first of them was stored, or as soon as the worker has
    nothing more queued. Under a backlog a device's reports are stored a few per second
    and each ack then names several of them (one MQTT message and its PUBACKs instead of
    one per report); when the worker keeps up, every batch is confirmed at once."""

    def __init__(self, publish_ack: Publish, metrics: ServerMetrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._publish, self._metrics, self._clock = publish_ack, metrics, clock
        self._seqs: dict[str, list[int]] = defaultdict(list)
        self._since: float | None = None
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return self._since is not None

    def add(self, keys: list[Key]) -> None:
        if not keys:
            return
        with self._lock:
            for device_id, seq in keys:
                self._seqs[device_id].append(seq)
            if self._since is None:
                self._since = self._clock()

    def due(self) -> bool:
        since = self._since
        return since is not None and self._clock() - since >= ACK_DELAY_S

    def flush(self) -> None:
        with self._lock:
            seqs, self._seqs, self._since = self._seqs, defaultdict(list), None
        for device_id, stored in seqs.items():
            topic = DeviceTopics(device_id).ack
            for ack in ReportAck.batches(device_id, stored):
                self._publish(topic, ack.to_bytes())
                self._metrics.acks.inc()


class ReportIngest:
    def __init__(self, *, prepare: Prepare, store: Store, publish_ack: Publish, prune: Prune,
                 limits: TelemetryLimits, metrics: ServerMetrics,
                 batch_transaction: Callable[[], AbstractContextManager[Any]] | None = None,
                 warm: Warm | None = None) -> None:
        """``batch_transaction``: one database transaction around several ``store``
        calls (one commit for many reports); a slice whose commit fails is stored again
        one message at a time (storage is idempotent by device seq)."""
        self._prepare, self._store_many, self._warm = prepare, store, warm
        self._publish_ack, self._prune = publish_ack, prune
        self._transaction = batch_transaction
        self._limits = limits
        self._metrics = metrics
        self._queue: queue.Queue[tuple[str, bytes, Done | None]] = queue.Queue(
            limits.queue_messages)
        metrics.track_queue(self._queue.qsize, limits.queue_messages)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # prepared batches wait here for the store thread: at most two, so the checks run
        # ahead of the database by one batch and the bounded queue keeps the back-pressure
        self._prepared_batches: queue.Queue[list[tuple[Any, Done | None]]] = queue.Queue(2)
        self._taken, self._taken_lock = 0, threading.Lock()  # out of the queue, not handled
        self._acks = AckBatcher(publish_ack, metrics)

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._check_loop, name="edgefleet-ingest-check",
                             daemon=True),
            threading.Thread(target=self._store_loop, name="edgefleet-ingest", daemon=True)]
        for thread in self._threads:
            thread.start()

    def stop(self, *, drain_s: float = 5.0) -> None:
        """Process what is queued (for at most ``drain_s``), then end the worker (what it
        stored is confirmed to the devices first)."""
        deadline = time.monotonic() + drain_s
        while self._busy() and time.monotonic() < deadline and self._alive():
            time.sleep(0.02)
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._acks.flush()

    def _busy(self) -> bool:
        with self._taken_lock:
            return self._taken > 0 or not self._queue.empty()

    def _alive(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def offer(self, topic: str, payload: bytes, done: Done | None = None) -> bool:
        """Queue a message, waiting while the queue is full; False once stopping. ``done``
        is called once the message is handled (the bridge's MQTT acknowledgement)."""
        while not self._stop.is_set():
            try:
                self._queue.put((topic, payload, done), timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def _check_loop(self) -> None:
        """Check thread: take a batch, read ahead for it (``warm``), prepare each message
        (signatures: CPU, and libsodium lets other threads run meanwhile), hand it on."""
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            with self._taken_lock:
                self._taken += len(batch)
            prepared = self._prepare_batch(batch)
            while not self._stop.is_set():
                try:
                    self._prepared_batches.put(prepared, timeout=0.5)
                    break
                except queue.Full:
                    continue

    def _store_loop(self) -> None:
        """Store thread: store each prepared batch, confirm it, and run retention."""
        next_prune = time.monotonic() + self._limits.prune_interval_s
        while not self._stop.is_set():
            if time.monotonic() >= next_prune:
                self._safely(self._prune)
                next_prune = time.monotonic() + self._limits.prune_interval_s
            try:
                prepared = self._prepared_batches.get(timeout=ACK_DELAY_S / 5 if self._acks
                                                      else 0.5)
            except queue.Empty:
                self._acks.flush()  # nothing more coming: confirm what is stored now
                continue
            try:
                self._store_batch(prepared)
            finally:
                with self._taken_lock:
                    self._taken -= len(prepared)
            if self._acks.due() or (self._queue.empty() and self._prepared_batches.empty()):
                self._acks.flush()

    def _prepare_batch(self, batch: list[tuple[str, bytes, Done | None]]
                       ) -> list[tuple[Any, Done | None]]:
        if self._warm is not None:
            try:
                self._warm([topic for topic, _, _ in batch])
            except Exception:  # each message's own checks read what they need
                log.exception("could not read ahead for a batch of %d messages", len(batch))
        return [(self._prepared(topic, payload), done) for topic, payload, done in batch]

    def _store_batch(self, todo: list[tuple[Any, Done | None]]) -> None:
        while todo:
            keys, handled = self._store(todo)
            for _, done in todo[:handled]:  # acknowledged once committed
                if done is not None:
                    done()
            self._acks.add(keys)
            todo = todo[handled:]
            if todo and self._transaction is not None:
                time.sleep(TX_GAP_S)  # let the other writers in

    def _prepared(self, topic: str, payload: bytes) -> Any:
        try:
            return self._prepare(topic, payload)
        except Exception:  # a bug in a check must not end the worker
            log.exception("could not prepare a message on %s", topic[:200])
            return None

    def _store(self, items: list[tuple[Any, Done | None]]) -> tuple[list[Key], int]:
        """Store prepared messages from the front of ``items`` (in one transaction with
        ``batch_transaction``, until ``TX_MAX_S``); the stored keys and how many were
        handled."""
        if self._transaction is None:
            return self._store_each(items[:1]), 1
        deadline = time.monotonic() + TX_MAX_S
        keys: list[Key] = []
        handled = 0
        try:
            with self._transaction():
                while handled < len(items):
                    part = items[handled:handled + STORE_CHUNK]
                    keys += self._keys([p for p, _ in part])
                    handled += len(part)
                    if time.monotonic() >= deadline:
                        break
            return keys, handled
        except Exception:  # the commit failed: nothing of the slice is stored
            lost = min(len(items), handled + STORE_CHUNK)
            log.exception("a batch of %d reports failed to commit; storing them one by one",
                          lost)
            return self._store_each(items[:lost]), lost

    def _keys(self, prepared: list[Any]) -> list[Key]:
        todo = [p for p in prepared if p is not None]
        return [key for key in self._store_many(todo) if key is not None] if todo else []

    def _store_each(self, items: list[tuple[Any, Done | None]]) -> list[Key]:
        return [key for p, _ in items for key in self._keys([p])]

    def _safely(self, job: Callable[[], None]) -> None:
        try:
            job()
        except Exception:  # retention must not end ingestion
            log.exception("retention failed; trying again next interval")
