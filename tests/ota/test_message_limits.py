"""Each class of limit the typed declarations carry over from protocol 1's first parsers:
lengths, finite numbers, strict integers and booleans, integer ranges, patterns, list and
map sizes, unknown keys where refused. Every refusal is one line naming the field, and a
value at the limit is still accepted."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from ota.acks import MAX_ACK_SEQS, ReportAck
from ota.chunks import MAGIC, ChunkHeader, decode_chunk_frame, encode_chunk_frame
from ota.errors import ChunkError, ProtocolError
from ota.messages import (
    DeviceState,
    Event,
    InstallStatus,
    LatencySummary,
    ShadowReport,
    Telemetry,
    check_execution,
)

SHA = "0123456789abcdef" * 4
TEL = Telemetry("dev-1", 5, 1.0, 10.0, "m@1.0.0", "cpu", 1, 0, 1, 0, LatencySummary(1, 2, 3))
STATE = DeviceState("dev-1", "online", 1.0, "0.1.0", 3, None,
                    InstallStatus(3, SHA, "committed", None, 1.0))


def _with(msg: Any, path: str, value: Any) -> bytes:
    obj = json.loads(msg.to_bytes())
    *parents, key = path.split(".")
    node = obj
    for part in parents:
        node = node[part]
    node[key] = value
    return json.dumps(obj).encode()


def _refused(cls: Any, raw: bytes, match: str) -> str:
    with pytest.raises(ProtocolError, match=match) as info:
        cls.from_bytes(raw)
    text = str(info.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(("path", "limit"), [("bundle", 512), ("delegate", 256),
                                             ("variant", 256), ("device_id", 64)])
def test_string_lengths_are_bounded_and_the_bound_itself_is_accepted(path: str, limit: int) -> None:
    assert getattr(Telemetry.from_bytes(_with(TEL, path, "a" * limit)), path) == "a" * limit
    _refused(Telemetry, _with(TEL, path, "a" * (limit + 1)), path)


def test_empty_names_are_refused_but_empty_free_text_is_not() -> None:
    _refused(Telemetry, _with(TEL, "bundle", ""), "Telemetry: bundle must not be empty")
    assert DeviceState.from_bytes(_with(STATE, "agent_version", "")).agent_version == ""


@pytest.mark.parametrize("raw_number", ["1e400", "-1e400", "NaN", "Infinity"])
def test_non_finite_numbers_are_refused(raw_number: str) -> None:
    raw = TEL.to_bytes().replace(b'"ts":1.0', b'"ts":' + raw_number.encode())
    _refused(Telemetry, raw, "ts must be finite|not valid JSON")
    with pytest.raises(ProtocolError, match="must be finite"):
        LatencySummary(float("inf"), 1.0, 1.0)


@pytest.mark.parametrize(("value", "kind"), [(True, "bool"), (1.0, "float"), ("5", "str"),
                                             (None, "null")])
def test_integers_are_strict(value: Any, kind: str) -> None:
    _refused(Telemetry, _with(TEL, "seq", value), f"'seq' must be an integer, got {kind}")


def test_booleans_are_strict() -> None:
    _refused(Telemetry, _with(TEL, "fallback", 1), "'fallback' must be a boolean, got int")
    with pytest.raises(ProtocolError, match="candidate_fallback"):
        ShadowReport("dev-1", 1, 1.0, 1.0, "a", "b", SHA, "classification", 1, 0, 0,
                     candidate_fallback=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(("path", "value", "match"), [
    ("seq", 2**63, "seq must be <= 9223372036854775807, got 9223372036854775808"),
    ("seq", 10**60, "seq must be <= 9223372036854775807, got an integer of 200 bits"),
    ("errors", -1, "errors must be >= 0, got -1"),
    ("window_s", -0.5, "window_s must be >= 0.0"),
    ("latency_ms.p99", -1, "latency_ms.p99 must be >= 0.0"),
])
def test_integer_and_number_ranges_are_enforced(path: str, value: Any, match: str) -> None:
    _refused(Telemetry, _with(TEL, path, value), match)
    assert Telemetry.from_bytes(_with(TEL, "seq", 2**63 - 1)).seq == 2**63 - 1


def test_fractions_stay_within_zero_and_one() -> None:
    _refused(DeviceState, _with(STATE, "install.progress", 1.01),
             "DeviceState: install.progress must be <= 1.0")


@pytest.mark.parametrize(("cls", "msg", "path", "value", "match"), [
    (Telemetry, TEL, "device_id", "dev 1", "device_id is an invalid device id"),
    (DeviceState, STATE, "install.sha256", SHA.upper(),
     "install.sha256 must be 64 lower-case hex characters"),
    (DeviceState, STATE, "install.sha256", SHA[:-1], "install.sha256 must be 64"),
])
def test_patterns_are_enforced(cls: Any, msg: Any, path: str, value: str, match: str) -> None:
    _refused(cls, _with(msg, path, value), match)


def test_enumerations_are_enforced() -> None:
    _refused(DeviceState, _with(STATE, "install.state", "done"),
             "install.state is an unknown install state 'done'")
    _refused(Event, Event("dev-1", 1, 1.0, "agent", None, None, None, "").to_bytes()
             .replace(b'"agent"', b'"reboot"'), "kind must be one of")


def test_list_and_map_sizes_are_bounded() -> None:
    ok = json.dumps({"protocol": 1, "device_id": "d", "seqs": list(range(MAX_ACK_SEQS))})
    assert len(ReportAck.from_bytes(ok.encode()).seqs) == MAX_ACK_SEQS
    _refused(ReportAck, ok.replace("[0, ", f"[{MAX_ACK_SEQS}, 0, ").encode(),
             "seqs must name 1..1024 sequence numbers, got 1025")
    with pytest.raises(ProtocolError, match="providers has 33 items, limit 32"):
        check_execution({"requested": "cpu", "delegate": "cpu", "fallback": False,
                         "providers": ["p"] * 33}, "active.execution")


def test_unknown_keys_are_ignored_but_the_execution_proof_keeps_them() -> None:
    proof = {"requested": "cpu", "delegate": "cpu", "fallback": False, "future": [1]}
    state = DeviceState.from_bytes(_with(STATE, "active", {
        "name": "m", "version": "1.0.0", "sha256": SHA, "slot": "a", "delegate": "cpu",
        "execution": proof, "future": 1}))
    assert state.active is not None and state.active.execution == proof


def test_several_bad_fields_give_one_line_naming_the_first_declared() -> None:
    obj = json.loads(TEL.to_bytes())
    obj.update(seq=-1, errors="x", device_id="a/b")
    text = _refused(Telemetry, json.dumps(obj).encode(), "device_id is an invalid device id")
    assert text.startswith("Telemetry: ") and "\n" not in text


def test_a_bad_chunk_header_is_a_chunk_error_naming_the_field() -> None:
    frame = encode_chunk_frame(SHA, 0, 2, b"data")
    header_json = json.dumps({"sha256": SHA, "index": True, "total": 2}).encode()
    bad = MAGIC + struct.pack(">H", len(header_json)) + header_json + b"data"
    with pytest.raises(ChunkError, match="chunk header: 'index' must be an integer, got bool"):
        decode_chunk_frame(bad, 1024)
    with pytest.raises(ChunkError, match="chunk index 2 out of range"):
        ChunkHeader(SHA, 2, 2)
    header, data = decode_chunk_frame(frame, 1024)
    assert (header, data) == (ChunkHeader(SHA, 0, 2), b"data")


def test_optional_fields_written_only_when_set_keep_older_payload_bytes() -> None:
    assert b"execution" not in DeviceState.from_bytes(STATE.to_bytes()).to_bytes()
    assert b"variant" not in TEL.to_bytes() and b"fallback" not in TEL.to_bytes()
    obj = json.loads(TEL.to_bytes())
    assert obj["bundle"] == "m@1.0.0" and json.loads(Telemetry(
        "dev-1", 1, 1.0, 1.0, None, None, 0, 0, 0, 0).to_bytes())["bundle"] is None
