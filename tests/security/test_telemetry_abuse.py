"""Attacks by an enrolled device on the server's telemetry ingestion (issue 14, items 5, 10),
against a real fleet-server process, with its embedded broker or on a real Mosquitto."""

from __future__ import annotations

import collections
import logging
import math
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from device_agent.outbox import Outbox
from fleet_server.telemetry_limits import TelemetryLimits
from ota.topics import DeviceTopics
from tests.e2e.harness import Fleet, wait_for
from tests.faults.telemetry_tools import agent_link, metrics, paho_device, stored, telemetry

from .broker_fleet import fleet_process

pytestmark = [pytest.mark.e2e]

FLOOD = 3000
PAD = 200 * 1024  # each message about 200 KiB, under the protocol's 256 KiB cap
MIB = 1024 * 1024
RSS_GROWTH_BOUND = 32 * MIB
"""Peak server memory over its level before the flood (the flood is about 600 MiB)."""


def _proc_status(pid: int, field: str) -> int:
    """``field`` (``VmRSS``, ``VmHWM``: peak) of ``/proc/PID/status``, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith(field + ":"))
    return int(kib) * 1024


def _flood(client: mqtt.Client, topic: str, device_id: str) -> int:
    """FLOOD reports of about 200 KiB at QoS 1, as fast as the broker acknowledges them
    (at most 20 unacknowledged, as paho's default); returns one report's size."""
    pending: collections.deque[mqtt.MQTTMessageInfo] = collections.deque()
    for seq in range(1, FLOOD + 1):
        pending.append(client.publish(topic, telemetry(device_id, seq, pad=PAD), qos=1))
        if len(pending) >= 20:
            pending.popleft().wait_for_publish(60)
    for info in pending:
        info.wait_for_publish(60)
    return len(telemetry(device_id, FLOOD, pad=PAD))


@pytest.mark.parametrize("kind", ["embedded", "mosquitto"])
def test_telemetry_flood_from_one_device_is_rate_limited_and_bounded(
        kind: str, tmp_path: Path) -> None:
    """One enrolled device floods 3,000 reports of about 200 KiB (under the protocol cap).
    The server's memory stays within ``RSS_GROWTH_BOUND``, the flood is dropped by the
    embedded broker's per-client rate limit (or by Mosquitto's queue bound) and the bridge's
    per-device rate limit, and another device's reports, sent through the agent's outbox
    during the flood, are all stored and confirmed."""
    limits = TelemetryLimits()  # default limits: the test holds the defaults to their promise
    with fleet_process(kind, tmp_path) as on_broker:
        fleet = on_broker.fleet
        flooder = paho_device(on_broker.enrol("flooder"))
        outbox = Outbox(tmp_path / "honest-outbox")
        honest = agent_link(on_broker.enrol("honest"), outbox, ack_timeout_s=2.0)
        honest.start()
        assert honest.connected.wait(15)
        pid = fleet.server.proc.pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (proc(5))
        rss_before = _proc_status(pid, "VmRSS")
        started = time.monotonic()
        size = _flood(flooder, DeviceTopics("flooder").telemetry, "flooder")
        for seq in range(1, 6):  # another device, right after the flood
            honest.publish_durable(DeviceTopics("honest").telemetry, telemetry("honest", seq),
                                   key=seq)
        elapsed = time.monotonic() - started
        wait_for(lambda: len(outbox) == 0 and stored(fleet.data, "honest") == (5, 5), 120,
                 "the other device's reports stored and confirmed", fleet.procs())

        def settled() -> dict | None:  # every flood message stored or dropped somewhere
            m = metrics(fleet)
            seen = (m[("edgefleet_telemetry_rate_limited_total", (("kind", "telemetry"),))]
                    + m[("edgefleet_broker_dropped_messages_total",
                         (("reason", "rate_limited"),))]
                    + stored(fleet.data, "flooder")[0])
            done = seen == FLOOD if kind == "embedded" else seen <= FLOOD
            return m if done and m[("edgefleet_telemetry_ingest_queue_depth", ())] == 0 \
                else None

        m = wait_for(settled, 60, "the flood accounted for", fleet.procs())
        window = time.monotonic() - started  # the bridge's buckets refilled all along
        peak = _proc_status(pid, "VmHWM")
        rows, distinct = stored(fleet.data, "flooder")
        assert distinct == rows
        # what the bridge's byte bucket lets through: its burst, then its rate
        bound = limits.burst_bytes // size + math.ceil(limits.rate_bytes * window / size) + 1
        assert 0 < rows <= bound < FLOOD, (rows, bound)
        bridge_limited = m[("edgefleet_telemetry_rate_limited_total", (("kind", "telemetry"),))]
        broker_dropped = m[("edgefleet_broker_dropped_messages_total",
                            (("reason", "rate_limited"),))]
        if kind == "embedded":  # the broker drops most of the flood before the server sees it
            assert broker_dropped > FLOOD // 2
            assert bridge_limited + broker_dropped + rows == FLOOD
            dropped_bytes = m[("edgefleet_broker_dropped_bytes_total",
                               (("reason", "rate_limited"),))]
            # payload sizes differ by a few bytes (the digits of seq and ts)
            assert broker_dropped * (size - 32) <= dropped_bytes <= broker_dropped * (size + 32)
        else:  # Mosquitto drops what exceeds max_queued_bytes silently; the bridge the rest
            assert broker_dropped == 0
            assert bridge_limited + rows <= FLOOD
        assert m[("edgefleet_telemetry_messages_stored_total", (("kind", "telemetry"),))] \
            == rows + 5
        assert m[("edgefleet_telemetry_ingest_queue_capacity", ())] == limits.queue_messages
        assert outbox.seqs() == [] and outbox.dropped == 0
        # docs/operations.md quotes this line (run with -s)
        print(f"{kind}: flood of {FLOOD * size / MIB:.0f} MiB in {elapsed:.1f} s: stored "
              f"{rows} reports, broker dropped {broker_dropped:.0f}, bridge dropped "
              f"{bridge_limited:.0f}; server RSS {rss_before / MIB:.0f} MiB before, peak "
              f"{peak / MIB:.0f} MiB")
        assert peak - rss_before < RSS_GROWTH_BOUND, (rss_before, peak)
        honest.stop()
        flooder.disconnect()
        flooder.loop_stop()


def test_metrics_need_the_admin_token(tmp_path: Path) -> None:
    import httpx

    fleet = Fleet(tmp_path)
    try:
        assert httpx.get(f"{fleet.url}/metrics", timeout=10).status_code == 401
        bad = httpx.get(f"{fleet.url}/metrics", timeout=10,
                        headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
        assert ("edgefleet_telemetry_pruned_rows_total", (("table", "telemetry"),)) in \
            metrics(fleet)
    finally:
        fleet.stop()


def test_seq_out_of_range_is_rejected_with_one_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """seq = 2**63 does not fit SQLite's integer: refused at the payload boundary with one
    log line per message, no traceback, nothing stored; the device's valid reports still are."""
    import base64
    import json

    from fleet_server.config import ServerSettings
    from fleet_server.registry import hash_secret
    from fleet_server.serve import RunningServer
    from ota.signed_report import ReportSigner
    from tests.fleet_server.mqtt_helpers import DeviceClient
    from tests.report_keys import KEYS, device_pem

    caplog.set_level(logging.INFO, logger="fleet_server")
    settings = ServerSettings(data_dir=tmp_path / "server", port=0, mqtt_port=0, insecure=True)
    with RunningServer(settings) as server:
        server.services.registry.add_device(device_id="dev-1", group="default",
                                            public_key=device_pem("dev-1"),
                                            mqtt_secret_hash=hash_secret("s"))
        device = DeviceClient(server.mqtt_url, "dev-1", "s")
        assert not device.wait_connack().is_failure
        topic = DeviceTopics("dev-1").telemetry
        good = json.loads(base64.b64decode(json.loads(telemetry("dev-1", 1))["payload"]))
        signer = ReportSigner(KEYS["dev-1"])  # signed by the device: the seq is what is bad
        try:
            for seq in (2**63, 2**64 + 5, 2**63 - 1):
                device.publish(topic, signer.sign(json.dumps({**good, "seq": seq}).encode()))
            device.publish(topic, telemetry("dev-1", 7))
            m = server.services.metrics
            assert wait_for(lambda: m.stored.labels("telemetry")._value.get() == 2, 10,
                            "the two valid reports stored")
        finally:
            device.close()
        rows = server.services.registry.list_telemetry(device_id="dev-1")
        assert sorted(r["seq"] for r in rows) == [7, 2**63 - 1]
        assert m.rejected._value.get() == 2
    lines = [r for r in caplog.records if "dropped message" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.WARNING] * 2
    assert "seq must be <= 9223372036854775807, got 9223372036854775808" in lines[0].getMessage()
    assert all(r.exc_info is None for r in caplog.records)
    assert "Traceback" not in caplog.text
