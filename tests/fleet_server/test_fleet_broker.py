"""The embedded broker: registry-backed authentication and the per-device topic ACL."""

from __future__ import annotations

from fleet_server.registry import hash_secret
from fleet_server.serve import RunningServer
from ota.messages import Telemetry
from ota.topics import DeviceTopics
from tests.report_keys import device_pem, signed

from .mqtt_helpers import DeviceClient, wait_until


def _enrol(server: RunningServer, device_id: str, secret: str) -> None:
    server.services.registry.add_device(device_id=device_id, group="default",
                                        public_key=device_pem(device_id),
                                        mqtt_secret_hash=hash_secret(secret))


def test_client_with_wrong_password_is_refused(server: RunningServer) -> None:
    _enrol(server, "dev-1", "right-secret")
    client = DeviceClient(server.mqtt_url, "dev-1", "wrong-secret")
    try:
        assert client.wait_connack().is_failure
    finally:
        client.close()


def test_unknown_device_is_refused(server: RunningServer) -> None:
    client = DeviceClient(server.mqtt_url, "ghost", "anything")
    try:
        assert client.wait_connack().is_failure
    finally:
        client.close()


def test_device_cannot_subscribe_to_another_devices_desired_topic(
        server: RunningServer) -> None:
    _enrol(server, "dev-1", "s1")
    _enrol(server, "dev-2", "s2")
    client = DeviceClient(server.mqtt_url, "dev-1", "s1")
    try:
        assert not client.wait_connack().is_failure
        assert client.subscribe(DeviceTopics("dev-2").desired)[0].is_failure
        assert client.subscribe("edgefleet/v1/devices/+/desired")[0].is_failure
        assert not client.subscribe(DeviceTopics("dev-1").desired)[0].is_failure
    finally:
        client.close()


def test_device_cannot_publish_as_another_device(server: RunningServer) -> None:
    _enrol(server, "dev-1", "s1")
    _enrol(server, "dev-2", "s2")
    attacker = DeviceClient(server.mqtt_url, "dev-1", "s1")
    try:
        attacker.wait_connack()
        def report(device_id: str) -> Telemetry:
            return Telemetry(device_id=device_id, seq=1, ts=1.0, window_s=10.0, bundle=None,
                             delegate=None, inferences=1, errors=0, total_inferences=1,
                             total_errors=0)
        forged = signed(report("dev-2"), by="dev-1")  # the attacker's own key
        attacker.publish(DeviceTopics("dev-2").telemetry, forged)
        attacker.publish(DeviceTopics("dev-1").telemetry, forged)  # wrong device in payload
        attacker.publish(DeviceTopics("dev-1").telemetry, signed(report("dev-1")))
        registry = server.services.registry
        assert wait_until(lambda: registry.list_telemetry(device_id="dev-1"))
        assert registry.list_telemetry(device_id="dev-2") == []
        assert [r["seq"] for r in registry.list_telemetry(device_id="dev-1")] == [1]
    finally:
        attacker.close()
