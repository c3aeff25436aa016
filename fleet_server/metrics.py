"""Prometheus metrics of one server, in its own ``CollectorRegistry`` (several servers may
run in one process, as in the tests). Served on ``GET /metrics`` (``api/routes/metrics.py``).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

REPORT_KINDS = ("telemetry", "events", "shadow")


class ServerMetrics:
    """The counters and gauges the MQTT ingestion path updates."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rate_limited = Counter(
            "edgefleet_telemetry_rate_limited", "Device reports dropped by the per-device "
            "rate limit before parsing", ["kind"], registry=r)
        self.rate_limited_bytes = Counter(
            "edgefleet_telemetry_rate_limited_bytes", "Bytes of device reports dropped by the "
            "per-device rate limit", registry=r)
        self.stored = Counter(
            "edgefleet_telemetry_messages_stored", "Device reports committed to the database",
            ["kind"], registry=r)
        self.duplicates = Counter(
            "edgefleet_telemetry_duplicates", "Device reports already stored (re-sent), "
            "confirmed again and not stored twice", ["kind"], registry=r)
        self.rejected = Counter(
            "edgefleet_telemetry_rejected", "Device messages refused as malformed, out of range "
            "or from an unknown device", registry=r)
        self.acks = Counter(
            "edgefleet_telemetry_acks_published", "ReportAck messages published to devices",
            registry=r)
        self.pruned = Counter(
            "edgefleet_telemetry_pruned_rows", "Rows deleted by retention", ["table"],
            registry=r)
        self.queue_depth = Gauge(
            "edgefleet_telemetry_ingest_queue_depth", "Messages received from the broker and "
            "not yet processed", registry=r)
        self.broker_dropped = Counter(
            "edgefleet_broker_dropped_messages", "Messages the embedded broker dropped: over "
            "the sender's rate limit, over the topic's size limit, or for a session whose "
            "delivery queue is full", ["reason"], registry=r)
        self.broker_dropped_bytes = Counter(
            "edgefleet_broker_dropped_bytes", "Payload bytes of the messages the embedded "
            "broker dropped", ["reason"], registry=r)
        self.broker_disconnects = Counter(
            "edgefleet_broker_disconnects", "Connections the embedded broker closed (a packet "
            "over its size limit)", ["reason"], registry=r)
        self.queue_capacity = Gauge(
            "edgefleet_telemetry_ingest_queue_capacity", "Bound of the ingest queue", registry=r)
        self.bundle_http = Counter(
            "edgefleet_bundle_http_responses", "Bundle download answers by route (by_hash, "
            "download) and answer (full, range, not_modified, redirect): what a CDN in front "
            "takes off the server shows here", ["route", "answer"], registry=r)
        for kind in REPORT_KINDS:  # exported at 0 from the start, not only once it happens
            self.rate_limited.labels(kind)
            self.stored.labels(kind)
            self.duplicates.labels(kind)
        for table in ("telemetry", "events"):
            self.pruned.labels(table)
        for reason in ("rate_limited", "too_large", "queue_full"):
            self.broker_dropped.labels(reason)
            self.broker_dropped_bytes.labels(reason)
        self.broker_disconnects.labels("packet_too_large")

    def track_queue(self, depth: Callable[[], int], capacity: int) -> None:
        self.queue_depth.set_function(lambda: float(depth()))
        self.queue_capacity.set(capacity)

    def render(self) -> bytes:
        return generate_latest(self.registry)

