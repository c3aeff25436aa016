"""Bounded ingestion of device messages: a queue, one worker, end-to-end acks, retention.

The MQTT network thread ``offer``s each message; when ``queue_messages`` are waiting it
blocks, so the broker connection stops being read (back-pressure) instead of memory
growing. The worker takes a batch and handles it in two steps: ``prepare`` each message
(parse, signature check: CPU, outside any transaction), then ``store`` the prepared ones
in lists (with ``batch_transaction`` one commit for many, in slices of at most
``TX_MAX_S``, instead of one commit per write; the store writes a list of telemetry in a
few statements). It then publishes one ``ReportAck`` per device naming the seqs now stored.
A message that was taken from the broker but not yet stored when the process dies is simply
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
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edgefleet-ingest", daemon=True)
        self._thread.start()

    def stop(self, *, drain_s: float = 5.0) -> None:
        """Process what is queued (for at most ``drain_s``), then end the worker."""
        deadline = time.monotonic() + drain_s
        while not self._queue.empty() and time.monotonic() < deadline and self._alive():
            time.sleep(0.02)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

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

    def _run(self) -> None:
        next_prune = time.monotonic() + self._limits.prune_interval_s
        while not self._stop.is_set():
            if time.monotonic() >= next_prune:
                self._safely(self._prune)
                next_prune = time.monotonic() + self._limits.prune_interval_s
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
            self._handle(batch)

    def _handle(self, batch: list[tuple[str, bytes, Done | None]]) -> None:
        stored: dict[str, list[int]] = defaultdict(list)
        if self._warm is not None:
            try:
                self._warm([topic for topic, _, _ in batch])
            except Exception:  # each message's own checks read what they need
                log.exception("could not read ahead for a batch of %d messages", len(batch))
        todo = [(self._prepared(topic, payload), done) for topic, payload, done in batch]
        while todo:
            keys, handled = self._store(todo)
            for key in keys:
                stored[key[0]].append(key[1])
            for _, done in todo[:handled]:  # acknowledged once committed
                if done is not None:
                    done()
            todo = todo[handled:]
            if todo and self._transaction is not None:
                time.sleep(TX_GAP_S)  # let the other writers in
        for device_id, seqs in stored.items():
            topic = DeviceTopics(device_id).ack
            for ack in ReportAck.batches(device_id, seqs):
                self._publish_ack(topic, ack.to_bytes())
                self._metrics.acks.inc()

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
