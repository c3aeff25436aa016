"""Bounded ingestion of device messages: a queue, one worker, end-to-end acks, retention.

The MQTT network thread ``offer``s each message; when ``queue_messages`` are waiting it
blocks, so the broker connection stops being read (back-pressure) instead of memory
growing. The worker processes a batch (parse, store: each report is committed to SQLite),
then publishes one ``ReportAck`` per device naming the seqs now stored. A message that
was taken from the broker but not yet stored when the process dies is simply never
confirmed: the device still holds it and sends it again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from fleet_server.metrics import ServerMetrics
from fleet_server.telemetry_limits import TelemetryLimits
from ota.acks import ReportAck
from ota.topics import DeviceTopics

log = logging.getLogger(__name__)

BATCH = 256
"""Messages processed before the acks of the batch go out."""

Process = Callable[[str, bytes], tuple[str, int] | None]
"""Handle one message; returns ``(device_id, seq)`` of a stored (or already stored) report."""
Publish = Callable[[str, bytes], None]
Prune = Callable[[], None]


class ReportIngest:
    def __init__(self, *, process: Process, publish_ack: Publish, prune: Prune,
                 limits: TelemetryLimits, metrics: ServerMetrics) -> None:
        self._process, self._publish_ack, self._prune = process, publish_ack, prune
        self._limits = limits
        self._metrics = metrics
        self._queue: queue.Queue[tuple[str, bytes]] = queue.Queue(limits.queue_messages)
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

    def offer(self, topic: str, payload: bytes) -> bool:
        """Queue a message, waiting while the queue is full; False once stopping."""
        while not self._stop.is_set():
            try:
                self._queue.put((topic, payload), timeout=0.5)
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

    def _handle(self, batch: list[tuple[str, bytes]]) -> None:
        stored: dict[str, list[int]] = defaultdict(list)
        for topic, payload in batch:
            key = self._process(topic, payload)
            if key is not None:
                stored[key[0]].append(key[1])
        for device_id, seqs in stored.items():
            topic = DeviceTopics(device_id).ack
            for ack in ReportAck.batches(device_id, seqs):
                self._publish_ack(topic, ack.to_bytes())
                self._metrics.acks.inc()

    def _safely(self, job: Callable[[], None]) -> None:
        try:
            job()
        except Exception:  # retention must not end ingestion
            log.exception("retention failed; trying again next interval")
