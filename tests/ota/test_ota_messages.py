"""JSON messages: every message round trips; wrong protocol, wrong types, oversize and
garbage are refused with ProtocolError; unknown extra keys are ignored."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ota.errors import ProtocolError
from ota.limits import DEFAULT_LIMITS, ProtocolLimits
from ota.messages import (
    ActiveModel,
    ChunkRequest,
    DeviceState,
    Event,
    InstallStatus,
    LatencySummary,
    Telemetry,
)

SHA = "0123456789abcdef" * 4

SAMPLES: list[Any] = [
    DeviceState(
        device_id="dev-1",
        status="online",
        ts=1764384000.0,
        agent_version="0.1.0",
        applied_seq=7,
        active=ActiveModel("digits", "1.0.0", SHA, "a", "onnxruntime:CPUExecutionProvider"),
        install=InstallStatus(seq=7, sha256=SHA, state="committed", error=None, progress=1.0),
    ),
    DeviceState("dev-2", "online", 1.5, "0.1.0", 0, None, None),
    DeviceState.offline("dev-3"),
    Telemetry(
        device_id="dev-1",
        seq=42,
        ts=1764384000.0,
        window_s=10.0,
        bundle="digits@1.0.0",
        delegate="onnxruntime:CPUExecutionProvider",
        inferences=120,
        errors=0,
        total_inferences=5120,
        total_errors=3,
        latency_ms=LatencySummary(0.21, 0.40, 0.91),
    ),
    Telemetry("dev-1", 43, 1.0, 10.0, None, None, 0, 0, 0, 0, None),
    Event("dev-1", 43, 1764384000.0, "install", "verified", 8, SHA, ""),
    Event("dev-1", 44, 1764384000.0, "agent", None, None, None, "started"),
    ChunkRequest("dev-1", SHA, 0, 8),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_and_carries_protocol_1(msg: Any) -> None:
    raw = msg.to_bytes()
    assert json.loads(raw)["protocol"] == 1
    assert type(msg).from_bytes(raw) == msg


def test_documented_device_state_example_parses() -> None:
    raw = json.dumps(
        {
            "protocol": 1, "device_id": "dev-1", "status": "online", "ts": 1764384000,
            "agent_version": "0.1.0", "applied_seq": 7,
            "active": {"name": "digits", "version": "1.0.0", "sha256": SHA, "slot": "a",
                       "delegate": "onnxruntime:CPUExecutionProvider"},
            "install": {"seq": 7, "sha256": SHA, "state": "committed", "error": None,
                        "progress": 1},
        }
    ).encode()
    state = DeviceState.from_bytes(raw)
    assert state.ts == 1764384000.0 and isinstance(state.ts, float)
    assert state.active is not None and state.active.slot == "a"
    assert state.install is not None and state.install.state == "committed"


def test_unknown_extra_keys_are_ignored_for_forward_compatibility() -> None:
    msg = SAMPLES[3]
    obj = json.loads(msg.to_bytes())
    obj["future_field"] = {"anything": [1, 2]}
    obj["latency_ms"]["p999"] = 3.0
    assert Telemetry.from_bytes(json.dumps(obj).encode()) == msg


def _mutated(msg: Any, **changes: Any) -> bytes:
    obj = json.loads(msg.to_bytes())
    for key, value in changes.items():
        if value is ...:
            del obj[key]
        else:
            obj[key] = value
    return json.dumps(obj).encode()


@pytest.mark.parametrize("protocol", [2, 0, "1", 1.0, None, ...])
@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_wrong_or_missing_protocol_is_refused(msg: Any, protocol: Any) -> None:
    with pytest.raises(ProtocolError, match="protocol"):
        type(msg).from_bytes(_mutated(msg, protocol=protocol))


@pytest.mark.parametrize(
    ("msg", "key", "value", "match"),
    [
        (SAMPLES[0], "applied_seq", "7", "'applied_seq' must be an integer"),
        (SAMPLES[0], "applied_seq", True, "'applied_seq' must be an integer"),
        (SAMPLES[0], "applied_seq", -1, "applied_seq must be >= 0"),
        (SAMPLES[0], "ts", "now", "'ts' must be a number"),
        (SAMPLES[0], "status", "sleeping", "status must be"),
        (SAMPLES[0], "device_id", "dev/1", "invalid device id"),
        (SAMPLES[0], "active", [1], "'active' must be an object"),
        (SAMPLES[0], "install", {"seq": 1, "sha256": SHA, "state": "bogus", "progress": 0},
         "unknown install state"),
        (SAMPLES[0], "active", {"name": "d", "version": "1", "sha256": "xyz", "slot": "a",
                                "delegate": "cpu"}, "sha256 must be 64"),
        (SAMPLES[3], "inferences", 1.5, "'inferences' must be an integer"),
        (SAMPLES[3], "latency_ms", {"p50": 1, "p95": "x", "p99": 1}, "'p95' must be a number"),
        (SAMPLES[3], "seq", ..., "missing 'seq'"),
        (SAMPLES[5], "kind", "party", "kind must be one of"),
        (SAMPLES[5], "state", None, "install event needs a state"),
        (SAMPLES[5], "instruction_seq", "8", "'instruction_seq' must be an integer"),
        (SAMPLES[7], "count", 0, "count must be >= 1"),
        (SAMPLES[7], "count", 9, "exceeds window limit 8"),
        (SAMPLES[7], "index", -1, "index must be >= 0"),
        (SAMPLES[7], "sha256", SHA.upper(), "sha256 must be 64"),
    ],
)
def test_wrong_types_and_ranges_are_refused_with_a_precise_message(
    msg: Any, key: str, value: Any, match: str
) -> None:
    with pytest.raises(ProtocolError, match=match):
        type(msg).from_bytes(_mutated(msg, **{key: value}))


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"[1, 2]", b"\xff\xfe", b'{"protocol": 1, "ts": NaN}', b"null"],
)
def test_garbage_payloads_are_refused(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        DeviceState.from_bytes(raw)


def test_oversize_payload_is_refused_before_parsing() -> None:
    msg = Event("dev-1", 1, 1.0, "error", None, None, None, "x")
    padded = _mutated(msg, padding="x" * DEFAULT_LIMITS.max_json_payload)
    with pytest.raises(ProtocolError, match="exceeds limit"):
        Event.from_bytes(padded)
    small = ProtocolLimits(max_json_payload=64)
    with pytest.raises(ProtocolError, match="exceeds limit 64"):
        Event.from_bytes(msg.to_bytes(), small)


def test_constructing_an_invalid_message_directly_is_refused() -> None:
    with pytest.raises(ProtocolError):
        InstallStatus(seq=1, sha256=SHA, state="committed", error=None, progress=1.5)
    with pytest.raises(ProtocolError):
        ActiveModel("digits", "1.0.0", SHA, "c", "cpu")
    with pytest.raises(ProtocolError):
        LatencySummary(float("nan"), 1.0, 1.0)
