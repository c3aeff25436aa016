"""Real devices for the telemetry tests: enrolled through the CLIs against a real fleet-server
process, then driven with paho (a flooding device) or the agent's own outbox and MQTT link."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from device_agent.mqtt_link import MqttLink
from device_agent.outbox import Outbox
from device_agent.report_signer import device_key_path
from model_bundles import keys as mb_keys
from ota.messages import DeviceState, Telemetry
from ota.signed_report import ReportSigner
from ota.topics import DeviceTopics
from tests.e2e.harness import Fleet, run_cli
from tests.report_keys import KEYS, signed


def enrol(fleet: Fleet, device_id: str) -> dict[str, str]:
    """``device-agent install`` for ``device_id``; returns its config.json (MQTT credentials)."""
    token = json.loads(fleet.cli("fleet-server", "enrol-token", "--json").stdout)["token"]
    agent_dir = fleet.root / f"agent-{device_id}"
    run_cli("device-agent", "install", "--server", fleet.url, "--token", token,
            "--device-id", device_id, "--dir", str(agent_dir))
    KEYS[device_id] = mb_keys.load_private_key(device_key_path(agent_dir))  # signs its reports
    return dict(json.loads((agent_dir / "config.json").read_text()))


def paho_device(config: dict[str, str]) -> mqtt.Client:
    """A connected paho client with the device's credentials (network loop running)."""
    url = urlsplit(config["mqtt_url"])
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=config["device_id"],
                         clean_session=True)
    client.username_pw_set(config["mqtt_username"], config["mqtt_password"])
    client.max_queued_messages_set(0)
    client.connect(url.hostname or "127.0.0.1", url.port or 1883, keepalive=30)
    client.loop_start()
    deadline = time.monotonic() + 10
    while not client.is_connected():
        assert time.monotonic() < deadline, "device did not connect"
        time.sleep(0.05)
    return client


def agent_link(config: dict[str, str], outbox: Outbox, *,
               ack_timeout_s: float = 30.0) -> MqttLink:
    """The agent's own MQTT link (outbox, ReportAck) with the device's credentials."""
    device_id = config["device_id"]
    topics = DeviceTopics(device_id)
    url = urlsplit(config["mqtt_url"])
    return MqttLink(device_id=device_id, host=url.hostname or "127.0.0.1", port=url.port or 1883,
                    username=config["mqtt_username"], password=config["mqtt_password"],
                    will_topic=topics.state,
                    will_payload=signed(DeviceState.offline(device_id, agent_version="test")),
                    subscriptions=topics.device_subscriptions, outbox=outbox,
                    on_message=lambda topic, payload: None, ack_topic=topics.ack,
                    backoff_base=0.2, backoff_cap=1.0, ack_timeout_s=ack_timeout_s)


def telemetry(device_id: str, seq: int, pad: int = 0) -> bytes:
    """A valid Telemetry report signed by the enrolled device; an unknown key of ``pad``
    bytes (3/4 of them inside the signed payload, base64 adds the rest) makes the envelope
    about ``pad`` bytes larger."""
    tel = Telemetry(device_id=device_id, seq=seq, ts=time.time(), window_s=1.0, bundle=None,
                    delegate=None, inferences=1, errors=0, total_inferences=seq,
                    total_errors=0)
    if not pad:
        return signed(tel)
    report = json.dumps({"protocol": 1, **tel.to_dict(), "pad": "x" * (pad * 3 // 4)}).encode()
    return ReportSigner(KEYS[device_id]).sign(report)


def stored(data_dir: Path, device_id: str) -> tuple[int, int]:
    """(rows, distinct seqs) of the device's telemetry in the server's SQLite file."""
    with sqlite3.connect(f"file:{data_dir / 'registry.db'}?mode=ro", uri=True,
                         timeout=30) as conn:
        rows, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT seq) FROM telemetry WHERE device_id = ?",
            [device_id]).fetchone()
    return int(rows), int(distinct)


def metrics(fleet: Fleet) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics with the admin token, parsed by prometheus_client's parser."""
    r = httpx.get(f"{fleet.url}/metrics", headers={"Authorization": f"Bearer {fleet.token}"},
                  timeout=10)
    r.raise_for_status()
    out = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out
