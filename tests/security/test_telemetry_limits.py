"""Bad input to the telemetry bounds and the acknowledgement: refused precisely, nothing
changed; a device cannot confirm (and so delete) another device's reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet_server.config import ServerSettings
from fleet_server.registry import hash_secret
from fleet_server.serve import RunningServer
from fleet_server.telemetry_limits import DeviceRateLimiter, LimitsError, TelemetryLimits
from ota.acks import MAX_ACK_SEQS, ReportAck
from ota.errors import ProtocolError
from ota.topics import DeviceTopics
from tests.e2e.harness import run_cli
from tests.faults.telemetry_tools import telemetry
from tests.fleet_server.mqtt_helpers import DeviceClient
from tests.report_keys import device_pem


@pytest.mark.parametrize(("item", "reason"), [
    ("nope=1", "want KEY=VALUE with KEY one of rate_msgs"),
    ("rate_msgs", "want KEY=VALUE"),
    ("rate_msgs=fast", "'fast' is not a number"),
    ("burst_msgs=1.5", "'1.5' is not a number"),
    ("keep_rows=0", "keep_rows must be a positive number, got 0"),
    ("rate_bytes=-1", "rate_bytes must be a positive number, got -1.0"),
    ("burst_bytes=1000", "burst_bytes must be at least 262144"),
])
def test_bad_telemetry_limit_is_refused_with_its_reason(item: str, reason: str) -> None:
    with pytest.raises(LimitsError, match=reason.replace("(", r"\(").replace(".", r"\.")):
        TelemetryLimits.parse([item])


def test_bad_telemetry_limit_on_the_command_line_exits_2_and_creates_nothing(
        tmp_path: Path) -> None:
    data = tmp_path / "server"
    proc = run_cli("fleet-server", "serve", "--data", str(data), "--port", "0",
                   "--mqtt-port", "0", "--telemetry-limit", "rate_msgs=fast", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fleet-server: bad telemetry limit 'rate_msgs=fast': 'fast' is not a number"]
    assert not data.exists()


def test_rate_limit_is_per_device_and_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = DeviceRateLimiter(TelemetryLimits(rate_msgs=2, burst_msgs=3),
                                clock=lambda: now[0])
    assert [limiter.allow("a", 100) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", 100)  # another device has its own buckets
    now[0] = 1.0  # two more messages' worth
    assert [limiter.allow("a", 100) for _ in range(3)] == [True, True, False]
    big = TelemetryLimits(rate_bytes=1000, burst_bytes=300_000)
    bytes_limiter = DeviceRateLimiter(big, clock=lambda: now[0])
    assert bytes_limiter.allow("c", 200_000)
    assert not bytes_limiter.allow("c", 200_000)  # the byte bucket, not the message count
    assert bytes_limiter.allow("c", 90_000)


@pytest.mark.parametrize(("payload", "reason"), [
    ({"device_id": "dev-1", "seqs": "1,2"}, "'seqs' must be a list"),
    ({"device_id": "dev-1", "seqs": []}, "seqs must name 1..1024"),
    ({"device_id": "dev-1", "seqs": list(range(MAX_ACK_SEQS + 1))}, "seqs must name 1..1024"),
    ({"device_id": "dev-1", "seqs": [True]}, "seqs\\[\\] must be an integer, got bool"),
    ({"device_id": "dev-1", "seqs": [-1]}, "seqs\\[\\] must be >= 0"),
    ({"device_id": "dev-1", "seqs": [2**63]}, "seqs\\[\\] must be <= 9223372036854775807"),
    ({"device_id": "../x", "seqs": [1]}, "invalid device id"),
    ({"seqs": [1]}, "missing 'device_id'"),
])
def test_malformed_report_ack_is_refused(payload: dict, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        ReportAck.from_bytes(json.dumps({"protocol": 1, **payload}).encode())


def test_device_cannot_confirm_another_devices_reports(tmp_path: Path) -> None:
    """A forged ReportAck would make the victim delete reports the server never stored:
    the broker ACL keeps every device off the others' ``ack`` topics."""
    settings = ServerSettings(data_dir=tmp_path / "server", port=0, mqtt_port=0, insecure=True)
    with RunningServer(settings) as server:
        for device_id in ("victim", "attacker"):
            server.services.registry.add_device(device_id=device_id, group="default",
                                                public_key=device_pem(device_id),
                                                mqtt_secret_hash=hash_secret("s"))
        victim = DeviceClient(server.mqtt_url, "victim", "s")
        attacker = DeviceClient(server.mqtt_url, "attacker", "s")
        try:
            assert not victim.wait_connack().is_failure
            assert not attacker.wait_connack().is_failure
            victim_ack = DeviceTopics("victim").ack
            assert [r.is_failure for r in attacker.subscribe(victim_ack)] == [True]
            victim.subscribe(victim_ack)
            attacker.client.publish(victim_ack, ReportAck("victim", (1, 2, 3)).to_bytes(),
                                    qos=1)
            victim.publish(DeviceTopics("victim").telemetry, telemetry("victim", 9))
            topic, payload = victim.receive()  # the server's ack, not the forged one
            assert (topic, ReportAck.from_bytes(payload).seqs) == (victim_ack, (9,))
            assert victim.messages.empty()
            assert [r["seq"] for r in server.services.registry.list_telemetry(
                device_id="victim")] == [9]
        finally:
            victim.close()
            attacker.close()
