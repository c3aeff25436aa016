"""``GET /metrics`` on a real agent: scraped over HTTP after real predicts (local API and
in-process), parsed with prometheus_client's own parser, counts checked against the calls."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from device_agent.agent import Agent
from device_agent.metrics import AgentMetrics
from ota.messages import InputDrift, ShadowReport
from tests.faults.mqtt_tools import Mosquitto

from .agent_dirs import served_agent_dir

MODEL = {"model": "sample", "version": "1.0.0", "delegate": "onnxruntime:CPUExecutionProvider"}
GOOD = {"inputs": {"features": [[0.1] * 16]}}


def scrape(agent: Agent) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """Family name -> [(sample name, labels, value)] from the agent's /metrics."""
    r = httpx.get(f"{agent.api.url}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {f.name: [(s.name, s.labels, s.value) for s in f.samples]
            for f in text_string_to_metric_families(r.text)}


def value(families: dict[str, list[tuple[str, dict[str, str], float]]], sample: str,
          **labels: str) -> float:
    hits = [v for family in families.values() for n, lab, v in family
            if n == sample and all(lab.get(k) == x for k, x in labels.items())]
    assert len(hits) == 1, (sample, labels, hits)
    return hits[0]


def wait_until(predicate: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    m = Mosquitto(tmp_path / "mosquitto")
    m.start()
    yield m
    m.stop()


@pytest.mark.mosquitto
def test_scrape_counts_every_predict_and_error_with_the_serving_model_labels(
    tmp_path: Path, sample_onnx: Path, broker: Mosquitto,
) -> None:
    agent_dir = served_agent_dir(tmp_path / "agent", sample_onnx, mqtt_url=broker.url)
    with Agent(agent_dir, api_port=0) as agent:
        wait_until(agent.link.connected.is_set, "the MQTT link")
        http_ok, bad, in_process = 7, 3, 5
        for _ in range(http_ok):
            assert httpx.post(f"{agent.api.url}/v1/predict", json=GOOD).status_code == 200
        for _ in range(bad):  # wrong width: refused with 400, counted as errors
            r = httpx.post(f"{agent.api.url}/v1/predict",
                           json={"inputs": {"features": [[0.1] * 3]}})
            assert r.status_code == 400
        for _ in range(in_process):
            agent.predict({"features": [[0.2] * 16]})
        m = scrape(agent)

    ok = http_ok + in_process
    assert value(m, "edgefleet_agent_inference_requests_total", **MODEL) == ok + bad
    assert value(m, "edgefleet_agent_inference_errors_total", **MODEL) == bad
    assert value(m, "edgefleet_agent_inference_duration_seconds_count", **MODEL) == ok
    assert value(m, "edgefleet_agent_inference_duration_seconds_bucket", le="+Inf",
                 **MODEL) == ok
    assert value(m, "edgefleet_agent_inference_duration_seconds_sum", **MODEL) > 0
    assert value(m, "edgefleet_agent_mqtt_connected") == 1
    assert value(m, "edgefleet_agent_active_model_info", variant="onnx-fp32", **MODEL) == 1
    states = {lab["state"]: v for _, lab, v in m["edgefleet_agent_install_state"]}
    assert states["idle"] == 1 and sum(states.values()) == 1  # installed by hand: no journal
    assert value(m, "edgefleet_agent_shadow_dropped_total") == 0
    assert "edgefleet_agent_shadow_top1_agreement_ratio" in m  # declared, no window yet
    assert m["edgefleet_agent_shadow_top1_agreement_ratio"] == []


def test_outbox_depth_and_link_down_are_scraped_while_the_broker_is_unreachable(
    tmp_path: Path, sample_onnx: Path,
) -> None:
    agent_dir = served_agent_dir(tmp_path / "agent", sample_onnx)  # port 1: nothing listens
    with Agent(agent_dir, api_port=0) as agent:
        agent.send_telemetry()
        agent.send_telemetry()
        m = scrape(agent)
        records, size = len(agent.outbox), agent.outbox.size_bytes
    # the "agent started" event and two telemetry reports wait on disk
    assert records == 3
    assert value(m, "edgefleet_agent_outbox_records") == records
    assert value(m, "edgefleet_agent_outbox_bytes") == size > 0
    assert value(m, "edgefleet_agent_outbox_dropped_total") == 0
    assert value(m, "edgefleet_agent_mqtt_connected") == 0


def test_last_shadow_window_sets_agreement_and_drift_per_input(
    tmp_path: Path, sample_onnx: Path,
) -> None:
    agent_dir = served_agent_dir(tmp_path / "agent", sample_onnx)
    with Agent(agent_dir, api_port=0) as agent:
        agent.metrics.record_shadow_report(ShadowReport(
            device_id="dev-1", seq=9, ts=0.0, window_s=10.0, active="sample@1.0.0",
            candidate="sample@2.0.0", candidate_sha256="ab" * 32, task="classifier",
            samples=40, dropped=2, candidate_errors=0, top1_agreement=0.95, cosine=0.99,
            drift={"features": InputDrift(psi=0.31, ks_stat=0.4, ks_pvalue=0.001,
                                          drifted=True)}))
        m = scrape(agent)
    cand = {"candidate": "sample@2.0.0"}
    assert value(m, "edgefleet_agent_shadow_top1_agreement_ratio", **cand) == 0.95
    assert value(m, "edgefleet_agent_shadow_cosine_similarity", **cand) == 0.99
    assert value(m, "edgefleet_agent_input_drift_psi", input="features", **cand) == 0.31
    assert value(m, "edgefleet_agent_input_drift_ks_statistic", input="features",
                 **cand) == 0.4
    assert value(m, "edgefleet_agent_input_drifted", input="features", **cand) == 1


def test_two_agents_in_one_process_keep_separate_registries() -> None:
    a, b = AgentMetrics(), AgentMetrics()
    a.observer("m", "1", "cpu").ok(1.0)
    assert a.registry.get_sample_value("edgefleet_agent_inference_requests_total",
                                       {"model": "m", "version": "1", "delegate": "cpu"}) == 1
    assert b.registry.get_sample_value("edgefleet_agent_inference_requests_total",
                                       {"model": "m", "version": "1", "delegate": "cpu"}) is None


def test_local_api_without_metrics_answers_404_on_metrics(
    tmp_path: Path, sample_onnx: Path,
) -> None:
    from device_agent.local_api import LocalApi
    from device_agent.telemetry import TelemetryRecorder

    with LocalApi(lambda: None, TelemetryRecorder(), port=0) as api:
        r = httpx.get(f"{api.url}/metrics")
    assert r.status_code == 404 and "no metrics" in r.json()["error"]


def test_docs_name_exactly_the_metrics_a_real_agent_exports(
    tmp_path: Path, sample_onnx: Path,
) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    agent_dir = served_agent_dir(tmp_path / "agent", sample_onnx)
    with Agent(agent_dir, api_port=0) as agent:
        agent.predict({"features": [[0.2] * 16]})
        agent.metrics.record_shadow_report(ShadowReport(
            device_id="dev-1", seq=1, ts=0.0, window_s=1.0, active="sample@1.0.0",
            candidate="sample@2.0.0", candidate_sha256="cd" * 32, task="classifier",
            samples=1, dropped=0, candidate_errors=0, top1_agreement=1.0, cosine=1.0,
            drift={"features": InputDrift(psi=0.0, ks_stat=0.0, ks_pvalue=1.0,
                                          drifted=False)}))
        r = httpx.get(f"{agent.api.url}/metrics")
        default_port = agent.config.api_port
    families = list(text_string_to_metric_families(r.text))
    exported = {f.name for f in families} | {s.name for f in families for s in f.samples}
    documented = set(re.findall(r"\bedgefleet_agent_[a-z0-9_]+", doc))
    not_yet = {"edgefleet_agent_certificate_expiry_timestamp_seconds"}  # documented TODO
    assert documented - not_yet - exported == set()
    public = {f.name + ("_total" if f.type == "counter" else "") for f in families
              if not f.name.endswith("_created")}  # prometheus_client's start timestamps
    assert public - documented == set()
    assert f'targets: ["127.0.0.1:{default_port}"]' in doc
