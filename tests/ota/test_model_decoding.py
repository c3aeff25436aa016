"""The two ways a protocol message is read (docs/adr/0006-msgspec-protocol-models.md) agree:
msgspec's decoder straight from the bytes, and ``json.loads`` + ``ota.model.validate`` (what
a refused payload goes through for its error). A value built in code is checked like a
decoded one, and keeps the decoded form (an integer given for a number is a float)."""

from __future__ import annotations

import json

import pytest

from ota.errors import ProtocolError
from ota.limits import DEFAULT_LIMITS
from ota.messages import DeviceState, Event, InstallStatus, LatencySummary, ShadowReport, Telemetry
from ota.model import load_message, replace, validate

SHA = "ab" * 32
TEL = Telemetry("dev-1", 7, 1_764_000_000, 10, "m@1.0.0", "cpu", 3, 0, 30, 1,
                LatencySummary(1, 2.5, 3), variant="int8", fallback=False, bundle_sha256=SHA)


def _slow(cls: type, raw: bytes) -> object:
    obj = load_message(raw, max_size=DEFAULT_LIMITS.max_json_payload, what=cls.__name__)
    return validate(cls, obj, cls.__name__)


@pytest.mark.parametrize("value", [
    TEL,
    Telemetry("dev-2", 0, 0.5, 1.0, None, None, 0, 0, 0, 0),
    Event("dev-1", 3, 1.0, "install", "trial", 4, SHA, None),
    DeviceState("dev-1", "online", 2.0, "1.2.3", 5, None, InstallStatus(5, SHA, "committed")),
    ShadowReport("dev-1", 9, 1.0, 10.0, "a@1", "b@2", SHA, "classification", 40, 1, 0,
                 top1_agreement=0.95, cosine=-0.5, active_sha256=SHA),
])
def test_the_fast_decoder_and_the_slow_parser_read_the_same_value(value: object) -> None:
    raw = value.to_bytes()  # type: ignore[attr-defined]
    cls = type(value)
    fast = cls.from_bytes(raw)  # type: ignore[attr-defined]
    assert fast == _slow(cls, raw) == value
    assert fast.to_bytes() == raw


@pytest.mark.parametrize(("patch", "match"), [
    ({"protocol": 2}, "unsupported protocol 2"),
    ({"protocol": True}, "unsupported protocol True"),
    ({"seq": 2**63}, "seq must be <= 9223372036854775807"),
    ({"ts": "1"}, "'ts' must be a number, got str"),
    ({"inferences": 1.0}, "'inferences' must be an integer, got float"),
    ({"latency_ms": {"p50": 1, "p95": 2}}, r"Telemetry.latency_ms: missing 'p99'"),
    ({"bundle_sha256": "AB" * 32}, "bundle_sha256 must be 64 lower-case hex characters"),
])
def test_a_refused_payload_names_the_field_whichever_way_it_came(
        patch: dict[str, object], match: str) -> None:
    obj = {**json.loads(TEL.to_bytes()), **patch}
    raw = json.dumps(obj).encode()
    for read in (Telemetry.from_bytes, lambda b: _slow(Telemetry, b)):
        with pytest.raises(ProtocolError, match=match):
            read(raw)


@pytest.mark.parametrize("raw", [b'{"protocol": 1, "ts": 1e999}', b'{"protocol": 1, "ts": NaN}',
                                 b'{"protocol": 1, "ts": Infinity}'])
def test_non_finite_numbers_are_refused(raw: bytes) -> None:
    with pytest.raises(ProtocolError, match="finite|not valid JSON"):
        Telemetry.from_bytes(raw)


def test_a_value_built_in_code_is_checked_and_stored_as_decoded() -> None:
    assert type(TEL.ts) is float and type(TEL.latency_ms.p50) is float  # type: ignore[union-attr]
    with pytest.raises(ProtocolError, match="Telemetry: seq must be >= 0, got -1"):
        Telemetry("dev-1", -1, 1.0, 10.0, None, None, 0, 0, 0, 0)
    with pytest.raises(ProtocolError, match="'errors' must be an integer, got bool"):
        Telemetry("dev-1", 1, 1.0, 10.0, None, None, 0, True, 0, 0)
    with pytest.raises(ProtocolError, match="Telemetry: seq must be >= 0"):
        replace(TEL, seq=-5)
    assert replace(TEL, seq=8).seq == 8
    with pytest.raises(ProtocolError, match="DeviceState: install.state is an unknown install"):
        DeviceState.from_dict({"device_id": "d", "status": "online", "ts": 1, "agent_version": "",
                               "applied_seq": 0,
                               "install": {"seq": 1, "sha256": None, "state": "nope"}})
