"""The MQTT bridge against the real embedded broker: chunks, telemetry, state, bad input."""

from __future__ import annotations

import hashlib
import os
import time

from fleet_server.registry import hash_secret
from fleet_server.serve import RunningServer
from ota.chunks import decode_chunk_frame, file_chunk_hashes
from ota.limits import DEFAULT_CHUNK_SIZE
from ota.messages import (
    ActiveModel,
    ChunkRequest,
    DeviceState,
    InstallStatus,
    LatencySummary,
    Telemetry,
)
from ota.topics import DeviceTopics
from tests.report_keys import device_pem, signed

from .mqtt_helpers import DeviceClient, wait_until


def _device(server: RunningServer, device_id: str = "dev-1") -> DeviceClient:
    server.services.registry.add_device(device_id=device_id, group="default",
                                        public_key=device_pem(device_id),
                                        mqtt_secret_hash=hash_secret("s"))
    client = DeviceClient(server.mqtt_url, device_id, "s")
    assert not client.wait_connack().is_failure
    return client


def _stage_bundle(server: RunningServer, *, name: str, size: int) -> tuple[str, bytes]:
    """Put raw bytes in the store as if uploaded (the bridge does not re-verify)."""
    data = os.urandom(size)
    sha = hashlib.sha256(data).hexdigest()
    path = server.services.data_dir.bundle_path(sha)
    path.write_bytes(data)
    server.services.registry.add_bundle(
        sha256=sha, name=name, version="1.0.0", size=size, publisher_key_id="k",
        manifest={"name": name}, chunk_size=DEFAULT_CHUNK_SIZE,
        chunk_hashes=file_chunk_hashes(path, DEFAULT_CHUNK_SIZE))
    return sha, data


def test_bridge_answers_chunk_request_with_frames_for_instructed_bundle(
        server: RunningServer) -> None:
    device = _device(server)
    sha, data = _stage_bundle(server, name="digits", size=2 * DEFAULT_CHUNK_SIZE + 1000)
    server.services.registry.issue_seq(device_id="dev-1", sha256=sha, deployment_id="dep-1")
    try:
        device.subscribe(DeviceTopics("dev-1").chunks)
        req = ChunkRequest(device_id="dev-1", sha256=sha, index=1, count=8)
        device.publish(DeviceTopics("dev-1").chunk_request, req.to_bytes())
        frames = [device.receive() for _ in range(2)]
        got = {}
        for topic, payload in frames:
            assert topic == DeviceTopics("dev-1").chunks
            header, chunk = decode_chunk_frame(payload, DEFAULT_CHUNK_SIZE)
            assert (header.sha256, header.total) == (sha, 3)
            got[header.index] = chunk
        assert got[1] == data[DEFAULT_CHUNK_SIZE:2 * DEFAULT_CHUNK_SIZE]
        assert got[2] == data[2 * DEFAULT_CHUNK_SIZE:]
        assert server.services.bridge is not None
        assert server.services.bridge.stats["chunks_served"] == 2
    finally:
        device.close()


def test_bridge_refuses_chunks_of_a_bundle_not_in_the_devices_instruction(
        server: RunningServer) -> None:
    device = _device(server)
    instructed, _ = _stage_bundle(server, name="digits", size=1000)
    other, _ = _stage_bundle(server, name="secret", size=1000)
    server.services.registry.issue_seq(device_id="dev-1", sha256=instructed,
                                       deployment_id="dep-1")
    bridge = server.services.bridge
    assert bridge is not None
    try:
        device.subscribe(DeviceTopics("dev-1").chunks)
        req = ChunkRequest(device_id="dev-1", sha256=other, index=0, count=1)
        device.publish(DeviceTopics("dev-1").chunk_request, req.to_bytes())
        assert wait_until(lambda: bridge.stats["chunk_requests_refused"] == 1)
        assert device.messages.empty()
        assert bridge.stats["chunks_served"] == 0
    finally:
        device.close()


def test_chunk_window_is_capped(server: RunningServer) -> None:
    server.services.registry.add_device(device_id="dev-1", group="default", public_key="p",
                                        mqtt_secret_hash="h")
    sha, _ = _stage_bundle(server, name="big", size=20 * 1024)
    server.services.registry.issue_seq(device_id="dev-1", sha256=sha, deployment_id="dep-1")
    row = server.services.registry.find_bundle(key=sha)
    assert row["chunk_size"] == DEFAULT_CHUNK_SIZE
    bridge = server.services.bridge
    assert bridge is not None
    bridge._max_window = 2
    frames = bridge.chunk_frames("dev-1", ChunkRequest(device_id="dev-1", sha256=sha,
                                                       index=0, count=8))
    assert len(frames) == 1  # 20 KiB is one chunk; the window never runs past the end


def _telemetry(seq: int) -> Telemetry:
    return Telemetry(device_id="dev-1", seq=seq, ts=time.time(), window_s=10.0,
                     bundle=None, delegate="onnxruntime:CPUExecutionProvider", inferences=5,
                     errors=0, total_inferences=5 * seq, total_errors=0,
                     latency_ms=LatencySummary(p50=0.2, p95=0.4, p99=0.9))


def test_repeated_telemetry_is_stored_once(server: RunningServer) -> None:
    device = _device(server)
    bridge = server.services.bridge
    assert bridge is not None
    try:
        for seq in (1, 2, 2, 1):
            device.publish(DeviceTopics("dev-1").telemetry, signed(_telemetry(seq)))
        assert wait_until(lambda: bridge.stats["telemetry_duplicates"] == 2)
        rows = server.services.registry.list_telemetry(device_id="dev-1")
        assert sorted(r["seq"] for r in rows) == [1, 2]
        summary = server.services.registry.get_device(device_id="dev-1")["telemetry_summary"]
        assert summary["latency_ms"]["p95"] == 0.4
    finally:
        device.close()


def test_malformed_payloads_are_dropped_and_bridge_keeps_working(
        server: RunningServer) -> None:
    device = _device(server)
    bridge = server.services.bridge
    assert bridge is not None
    try:
        topics = DeviceTopics("dev-1")
        device.publish(topics.telemetry, b"not json")
        device.publish(topics.events, b'{"protocol": 99}')
        device.publish(topics.chunk_request, b"\xff" * 100)
        device.publish(topics.telemetry, signed(_telemetry(7)))
        assert wait_until(lambda: bridge.stats["telemetry"] == 1)
        assert bridge.stats["dropped_malformed"] == 3
        assert bridge.stats["handler_errors"] == 0
    finally:
        device.close()


def test_device_state_updates_device_and_deployment_target(server: RunningServer) -> None:
    device = _device(server)
    registry = server.services.registry
    seq = registry.issue_seq(device_id="dev-1", sha256="a" * 64, deployment_id="dep-1")
    registry.add_deployment(deployment_id="dep-1", bundle_ref="digits@1.0.0",
                            bundle_id="a" * 64, target_kind="device", target_value="dev-1",
                            created_by="admin")
    registry.add_deployment_target(deployment_id="dep-1", device_id="dev-1",
                                   instruction_seq=seq)
    state = DeviceState(
        device_id="dev-1", status="online", ts=time.time(), agent_version="0.1.0",
        applied_seq=seq,
        active=ActiveModel(name="digits", version="1.0.0", sha256="a" * 64, slot="a",
                           delegate="onnxruntime:CPUExecutionProvider"),
        install=InstallStatus(seq=seq, sha256="a" * 64, state="committed", progress=1.0))
    try:
        device.publish(DeviceTopics("dev-1").state, signed(state), retain=True)
        assert wait_until(
            lambda: registry.get_deployment(deployment_id="dep-1")["targets"][0]["state"]
            == "committed")
        row = registry.get_device(device_id="dev-1")
        assert row["online"] is True
        assert (row["active_bundle"], row["delegate"]) == (
            "digits@1.0.0", "onnxruntime:CPUExecutionProvider")
    finally:
        device.close()
