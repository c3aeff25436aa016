"""Prometheus metrics of one server, in its own ``CollectorRegistry`` (several servers may
run in one process, as in the tests). Served on ``GET /metrics`` (``api/routes/metrics.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from fleet_server.fleet_collector import FleetCollector

REPORT_KINDS = ("telemetry", "events", "shadow")
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    """The counters and gauges the MQTT ingestion path and the HTTP middleware
    (``http_metrics``) update, and the fleet gauges read at scrape time (``track_fleet``)."""

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
        self.revoked_dropped = Counter(  # fleet_server/revoke.py
            "edgefleet_reports_revoked_dropped", "Device messages dropped because their "
            "device is revoked (not stored, not confirmed)", ["kind"], registry=r)
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
        self.reports_rejected = Counter(  # fleet_server.report_verify: device-signed reports
            "edgefleet_reports_rejected", "Device reports refused by signature verification, "
            "by reason (nothing of them is stored or confirmed)", ["reason"], registry=r)
        for reason in ("unknown_device", "unsigned", "bad_signature", "wrong_device",
                       "replayed", "wrong_bundle"):
            self.reports_rejected.labels(reason)
        self.http_requests = Counter(
            "edgefleet_http_requests", "HTTP requests answered, by method, route template "
            "and status code", ["method", "route", "status"], registry=r)
        self.http_duration = Histogram(
            "edgefleet_http_request_duration_seconds", "Time from a request's arrival to its "
            "response sent, by method and route template", ["method", "route"],
            buckets=HTTP_BUCKETS, registry=r)
        for kind in REPORT_KINDS:  # exported at 0 from the start, not only once it happens
            self.rate_limited.labels(kind)
            self.stored.labels(kind)
            self.duplicates.labels(kind)
        for table in ("telemetry", "events", "instruction_log"):
            self.pruned.labels(table)
        for reason in ("rate_limited", "too_large", "queue_full"):
            self.broker_dropped.labels(reason)
            self.broker_dropped_bytes.labels(reason)
        self.broker_disconnects.labels("packet_too_large")

    def track_queue(self, depth: Callable[[], int], capacity: int) -> None:
        self.queue_depth.set_function(lambda: float(depth()))
        self.queue_capacity.set(capacity)

    def track_fleet(self, overview: Callable[[], dict[str, Any]],
                    rollouts: Callable[[], list[dict[str, Any]]]) -> None:
        """Export devices by status and the active rollouts' stages and gates, read from
        ``overview()`` and ``rollouts()`` at each scrape (``fleet_collector``)."""
        self.registry.register(FleetCollector(overview, rollouts))

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_duration.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

