"""The embedded broker: registry-backed authentication and the per-device topic ACL."""

from __future__ import annotations

from fleet_server.registry import hash_secret
from fleet_server.serve import RunningServer
from ota.topics import DeviceTopics

from .mqtt_helpers import DeviceClient, wait_until


def _enrol(server: RunningServer, device_id: str, secret: str) -> None:
    server.services.registry.add_device(device_id=device_id, group="default", public_key="pem",
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
        report = (b'{"protocol":1,"device_id":"dev-2","seq":1,"ts":1.0,"window_s":10.0,'
                  b'"bundle":null,"delegate":null,"inferences":1,"errors":0,'
                  b'"total_inferences":1,"total_errors":0}')
        attacker.publish(DeviceTopics("dev-2").telemetry, report)
        attacker.publish(DeviceTopics("dev-1").telemetry, report)  # wrong device in payload
        own = report.replace(b'"dev-2"', b'"dev-1"')
        attacker.publish(DeviceTopics("dev-1").telemetry, own)
        registry = server.services.registry
        assert wait_until(lambda: registry.list_telemetry(device_id="dev-1"))
        assert registry.list_telemetry(device_id="dev-2") == []
        assert [r["seq"] for r in registry.list_telemetry(device_id="dev-1")] == [1]
    finally:
        attacker.close()
