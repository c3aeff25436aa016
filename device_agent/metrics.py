"""Prometheus metrics of one device agent, served by the local API at ``GET /metrics``.

Each ``AgentMetrics`` owns its own ``CollectorRegistry`` (never the process-wide default),
so several agents in one process (tests, the fleet simulator) do not collide.

Two kinds of metric, chosen by cost:

- the inference path (``edgefleet_agent_inference_*``) is counted as it happens, through an
  ``InferenceObserver`` bound once per loaded model (``bind``): a successful call adds to
  one bucket and the sum of its own latency histogram (plain numbers, under the
  ``TelemetryRecorder``'s lock, which the call takes anyway: about 0.15 us, where
  ``prometheus_client``'s ``Histogram.observe`` takes 0.8), a failed one increments a
  counter, with no label lookup; the histogram and ``requests_total`` (successes plus
  errors) are built when scraped;
- everything else (install state, MQTT link, outbox, shadow counters, the last shadow
  window's agreement and drift) is read from the agent's objects when scraped
  (``_AgentStateCollector``), so the code that produces those numbers is not touched.

TODO(certificates): a gauge ``edgefleet_agent_certificate_expiry_timestamp_seconds`` once
devices hold X.509 client certificates; today they authenticate to the broker with a
password and to the server with a signed key (no certificate has an expiry to report).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ota.install import InstallState

__all__ = ["DURATION_BUCKETS_S", "AgentMetrics", "InferenceObserver", "exposition"]

DURATION_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                      0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Predict latency buckets, seconds: 100 µs (a small model on a CPU) to 10 s."""

LABELS = ("model", "version", "delegate")


class InferenceObserver:
    """The counts of one (model, version, delegate), bound once; called per predict.

    ``ok`` runs under the ``TelemetryRecorder``'s lock (concurrent predicts do not lose
    counts); the scrape reads ``counts`` (one per bucket, then +Inf) and ``sum``."""

    __slots__ = ("_errors_inc", "counts", "sum")

    def __init__(self, errors: Any) -> None:
        self._errors_inc = errors.inc
        self.counts = [0] * (len(DURATION_BUCKETS_S) + 1)
        self.sum = 0.0

    def ok(self, latency_ms: float) -> None:
        seconds = latency_ms * 0.001
        self.counts[bisect_left(DURATION_BUCKETS_S, seconds)] += 1  # le: first bound >= it
        self.sum += seconds

    def error(self) -> None:
        self._errors_inc()


class AgentMetrics:
    """The registry of one agent and its inference counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.errors = Counter(
            "edgefleet_agent_inference_errors", "Predict calls refused (bad input) or failed",
            LABELS, registry=self.registry)
        self.observers: dict[tuple[str, str, str], InferenceObserver] = {}
        """Every (model, version, delegate) served so far and its counts (a series, once
        exported, stays: counters do not go back)."""
        self.registry.register(_InferenceCollector(self))
        self.last_shadow_report: Any = None

    def observer(self, model: str, version: str, delegate: str) -> InferenceObserver:
        labels = (model, version, delegate)
        if labels not in self.observers:
            self.observers[labels] = InferenceObserver(self.errors.labels(*labels))
        return self.observers[labels]

    def bind(self, recorder: Any, runtime: Any) -> None:
        """Point ``recorder`` (a ``TelemetryRecorder``) at ``runtime``'s counters; None: stop
        counting. Called whenever the agent's serving runtime changes."""
        recorder.observer = None if runtime is None else self.observer(
            runtime.manifest.name, runtime.manifest.version, str(runtime.delegate))

    def record_shadow_report(self, report: Any) -> None:
        """Keep the last closed shadow window (``ShadowReport``) for the agreement and drift
        gauges."""
        self.last_shadow_report = report

    def watch(self, agent: Any) -> None:
        """Read ``agent``'s state at every scrape (install, MQTT, outbox, shadow)."""
        self.registry.register(_AgentStateCollector(agent, self))

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape body and its content type (OpenMetrics when the scraper asks)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def exposition(metrics: AgentMetrics | None, accept: str | None) -> tuple[int, bytes, str]:
    """What the local API answers to ``GET /metrics``: (status, body, content type)."""
    if metrics is None:
        return 404, b'{"error": "no metrics on this server"}', "application/json"
    body, ctype = metrics.exposition(accept)
    return 200, body, ctype


class _InferenceCollector(Collector):
    """``edgefleet_agent_inference_duration_seconds`` (the observers' histograms) and
    ``edgefleet_agent_inference_requests_total``: per label set, the successful calls plus
    the errors, so the hot path increments one number, not two."""

    DURATION = ("edgefleet_agent_inference_duration_seconds", "Model run time of successful "
                "predict calls (decoding and the HTTP exchange excluded)")
    REQUESTS = ("edgefleet_agent_inference_requests",
                "Predict calls answered or refused, local API and in-process")
    BOUNDS = [*(floatToGoString(b) for b in DURATION_BUCKETS_S), "+Inf"]

    def __init__(self, metrics: AgentMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return [HistogramMetricFamily(*self.DURATION, labels=LABELS),
                CounterMetricFamily(*self.REQUESTS, labels=LABELS)]

    def collect(self) -> Any:
        totals: dict[tuple[str, ...], float] = {}
        duration = HistogramMetricFamily(*self.DURATION, labels=LABELS)
        for labels, obs in sorted(self.metrics.observers.items()):
            counts, total = list(obs.counts), obs.sum  # a copy: predicts go on meanwhile
            cumulative, running = [], 0
            for bound, n in zip(self.BOUNDS, counts, strict=True):
                running += n
                cumulative.append((bound, float(running)))
            duration.add_metric(list(labels), cumulative, total)
            totals[labels] = float(running)
        yield duration
        for family in self.metrics.errors.collect():
            for s in family.samples:
                if s.name.endswith("_total"):
                    key = tuple(s.labels[k] for k in LABELS)
                    totals[key] = totals.get(key, 0.0) + s.value
        requests = CounterMetricFamily(*self.REQUESTS, labels=LABELS)
        for key, calls in sorted(totals.items()):
            requests.add_metric(list(key), calls)
        yield requests


class _AgentStateCollector(Collector):
    """Scrape-time gauges and counters read from the agent's objects."""

    def __init__(self, agent: Any, metrics: AgentMetrics) -> None:
        self.agent = agent
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []  # the families depend on the agent's state: collected at each scrape

    def collect(self) -> Any:
        a = self.agent
        state = GaugeMetricFamily("edgefleet_agent_install_state",
                                  "1 for the install state machine's current state",
                                  labels=["state"])
        current = a.journal.state
        for s in InstallState:
            state.add_metric([s.value], 1.0 if s is current else 0.0)
        yield state

        rt = a.runtime
        info = GaugeMetricFamily("edgefleet_agent_active_model_info",
                                 "The model being served (value 1)",
                                 labels=["model", "version", "delegate", "variant"])
        if rt is not None:
            info.add_metric([rt.manifest.name, rt.manifest.version, str(rt.delegate),
                             str(rt.variant.id)], 1.0)
        yield info

        link = a.link
        yield GaugeMetricFamily("edgefleet_agent_mqtt_connected",
                                "1 while the MQTT link to the broker is up",
                                value=1.0 if link is not None and link.connected.is_set() else 0.0)

        outbox = a.outbox
        yield GaugeMetricFamily("edgefleet_agent_outbox_records",
                                "Reports stored on disk, not yet acknowledged", value=len(outbox))
        yield GaugeMetricFamily("edgefleet_agent_outbox_bytes",
                                "Disk used by the outbox", value=outbox.size_bytes)
        yield CounterMetricFamily("edgefleet_agent_outbox_dropped",
                                  "Reports dropped because the outbox was over its disk budget",
                                  value=outbox.dropped)

        shadow = a.shadow
        yield CounterMetricFamily("edgefleet_agent_shadow_samples",
                                  "Shadow samples run on a candidate and compared",
                                  value=shadow.total_samples)
        yield CounterMetricFamily("edgefleet_agent_shadow_dropped",
                                  "Shadow samples dropped (CPU budget, full queue, no quiet gap)",
                                  value=shadow.total_dropped)
        yield from _shadow_window(self.metrics.last_shadow_report)


def _shadow_window(report: Any) -> Any:
    """Gauges of the last closed shadow window (absent before the first one)."""
    agree = GaugeMetricFamily("edgefleet_agent_shadow_top1_agreement_ratio",
                              "Last shadow window: share of rows where candidate and active "
                              "model pick the same class", labels=["candidate"])
    cosine = GaugeMetricFamily("edgefleet_agent_shadow_cosine_similarity",
                               "Last shadow window: mean cosine similarity of the outputs",
                               labels=["candidate"])
    psi = GaugeMetricFamily("edgefleet_agent_input_drift_psi",
                            "Last shadow window: worst population stability index of an input",
                            labels=["candidate", "input"])
    ks = GaugeMetricFamily("edgefleet_agent_input_drift_ks_statistic",
                           "Last shadow window: worst Kolmogorov-Smirnov statistic of an input",
                           labels=["candidate", "input"])
    drifted = GaugeMetricFamily("edgefleet_agent_input_drifted",
                                "Last shadow window: 1 when the input is judged drifted",
                                labels=["candidate", "input"])
    if report is not None:
        cand = report.candidate
        if report.top1_agreement is not None:
            agree.add_metric([cand], report.top1_agreement)
        if report.cosine is not None:
            cosine.add_metric([cand], report.cosine)
        for name, d in sorted((report.drift or {}).items()):
            psi.add_metric([cand, name], d.psi)
            ks.add_metric([cand, name], d.ks_stat)
            drifted.add_metric([cand, name], 1.0 if d.drifted else 0.0)
    yield from (agree, cosine, psi, ks, drifted)
