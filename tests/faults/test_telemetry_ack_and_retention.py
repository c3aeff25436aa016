"""End-to-end acknowledgement of reports (issue 14, item 6) and retention (item 5).

The acknowledgement test kills a real fleet-server process (with its embedded broker, or on
a real Mosquitto) with SIGKILL while a device's real outbox and MQTT link stream QoS 1
telemetry; the retention
test runs a server in process and checks the rows, the floor and the metric."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from device_agent.outbox import Outbox
from fleet_server.config import ServerSettings
from fleet_server.registry import hash_secret
from fleet_server.serve import RunningServer
from fleet_server.telemetry_limits import TelemetryLimits
from ota.acks import ReportAck
from ota.messages import Telemetry
from ota.topics import DeviceTopics
from tests.e2e.harness import Process, read_json, wait_for
from tests.fleet_server.mqtt_helpers import DeviceClient
from tests.report_keys import device_pem, signed
from tests.security.broker_fleet import fleet_process

from .mqtt_tools import free_port
from .telemetry_tools import agent_link, stored, telemetry

N = 3000
DEVICE = "acked-1"


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["embedded", "mosquitto"])
def test_acknowledged_telemetry_survives_server_sigkill(kind: str, tmp_path: Path) -> None:
    """On the embedded broker the SIGKILL takes the broker down with the server; on
    Mosquitto the broker stays up and queues for the server's persistent session, up to
    its ``max_queued_*`` bounds (what it drops stays in the outbox and is sent again)."""
    # the fixed MQTT port lets the device find the restarted server's broker; the rate
    # limit is raised so that 3,000 records in a few seconds are all accepted
    args = ("--telemetry-limit", "rate_msgs=100000", "--telemetry-limit", "burst_msgs=100000")
    if kind == "embedded":
        args = ("--mqtt-port", str(free_port()), *args)
    with fleet_process(kind, tmp_path, serve_args=args) as on_broker:
        fleet = on_broker.fleet
        outbox = Outbox(tmp_path / "device-outbox")
        link = agent_link(on_broker.enrol(DEVICE), outbox)
        try:
            link.start()
            assert link.connected.wait(15)
            topic = DeviceTopics(DEVICE).telemetry

            def produce() -> None:  # the device keeps producing through the outage
                for seq in range(1, N + 1):
                    link.publish_durable(topic, telemetry(DEVICE, seq), key=seq)

            producer = threading.Thread(target=produce)
            producer.start()
            wait_for(lambda: stored(fleet.data, DEVICE)[0] >= N // 5, 60,
                     "the first records stored", fleet.procs(), interval=0.01)
            fleet.server.stop(signal.SIGKILL)  # mid-stream: the server (and its broker) die
            at_kill = stored(fleet.data, DEVICE)[0]
            assert at_kill < N
            assert len(outbox) > 0  # nothing unconfirmed was deleted
            (fleet.data / "ports.json").unlink()
            fleet.server = Process(fleet.server.args, tmp_path / "server-restarted.log")
            wait_for(lambda: read_json(fleet.data / "ports.json"), 60, "the restarted server",
                     fleet.procs())
            producer.join(120)
            assert not producer.is_alive()

            def all_stored() -> bool:
                return len(outbox) == 0 and stored(fleet.data, DEVICE) == (N, N)

            wait_for(all_stored, 120, "every record stored once and confirmed", fleet.procs())
            assert stored(fleet.data, DEVICE) == (N, N)  # rows == distinct seqs == N
            assert outbox.seqs() == [] and outbox.dropped == 0
        finally:
            link.stop()


def test_retention_prunes_old_telemetry_rows(tmp_path: Path) -> None:
    limits = TelemetryLimits(keep_rows=30, keep_days=1.0, prune_interval_s=0.2)
    settings = ServerSettings(data_dir=tmp_path / "server", port=0, mqtt_port=0,
                              telemetry=limits, insecure=True)
    with RunningServer(settings) as server:
        registry, metrics = server.services.registry, server.services.metrics
        registry.add_device(device_id="dev-1", group="default", public_key=device_pem("dev-1"),
                            mqtt_secret_hash=hash_secret("s"))
        device = DeviceClient(server.mqtt_url, "dev-1", "s")
        assert not device.wait_connack().is_failure
        topics = DeviceTopics("dev-1")
        device.subscribe(topics.ack)
        now = time.time()

        def report(seq: int, ts: float) -> bytes:
            return signed(Telemetry(device_id="dev-1", seq=seq, ts=ts, window_s=1.0,
                                    bundle=None, delegate=None, inferences=1, errors=0,
                                    total_inferences=seq, total_errors=0))

        try:
            for seq in range(1, 51):  # 1..5 are two days old; 50 rows, 30 kept
                device.publish(topics.telemetry, report(seq, now - 2 * 86400 if seq <= 5
                                                        else now))
            pruned = metrics.pruned.labels("telemetry")
            wait_for(lambda: registry.count_reports(table="telemetry", device_id="dev-1")
                     == 30 and pruned._value.get() == 20, 10, "retention to run")
            kept = [r["seq"] for r in registry.list_telemetry(device_id="dev-1", limit=100)]
            assert sorted(kept) == list(range(21, 51))
            acked: set[int] = set()
            while len(acked) < 50:
                _, payload = device.receive()
                acked.update(ReportAck.from_bytes(payload).seqs)
            assert acked == set(range(1, 51))  # every report was confirmed once stored
            # a pruned report sent again is confirmed but not stored a second time
            device.publish(topics.telemetry, report(12, now))
            assert ReportAck.from_bytes(device.receive()[1]).seqs == (12,)
            assert registry.count_reports(table="telemetry", device_id="dev-1") == 30
            assert 12 not in {r["seq"] for r in registry.list_telemetry(device_id="dev-1")}
            assert pruned._value.get() == 20  # nothing more to prune
        finally:
            device.close()
