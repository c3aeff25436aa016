"""Shadow protocol: instructions carry an optional shadow candidate and sample rate without
changing the bytes of payloads that do not use them; ShadowReport round trips and refuses
out-of-range or mistyped values; the shadow topic is a device publication the server hears."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ota.errors import InstructionError, ProtocolError
from ota.instructions import BundleRef, Instruction, sign_instruction, verify_instruction
from ota.messages import InputDrift, LatencySummary, ShadowReport
from ota.model import replace
from ota.topics import SERVER_SUBSCRIPTIONS, DeviceTopics, parse_device_topic
from tests.ota.test_ota_instructions import FLEET_KEY, NOW, make_instruction

SHA = "0123456789abcdef" * 4


def candidate_ref() -> BundleRef:
    base = make_instruction().bundle
    assert base is not None
    return replace(base, version="1.1.0", sha256="f" * 64)


def report(**changes: Any) -> ShadowReport:
    r = ShadowReport(
        device_id="dev-1", seq=44, ts=NOW, window_s=10.0, active="digits@1.0.0",
        candidate="digits@1.1.0", candidate_sha256=SHA, task="classification", samples=118,
        dropped=2, candidate_errors=0, top1_agreement=0.97, score_delta_mean=-0.004,
        mae=0.012, max_abs_error=0.31, cosine=0.998,
        latency_ms_active=LatencySummary(0.21, 0.40, 0.91),
        latency_ms_candidate=LatencySummary(0.25, 0.44, 1.02),
        candidate_delegate="onnxruntime:CPUExecutionProvider", candidate_fallback=False,
        drift={"X": InputDrift(psi=0.04, ks_stat=0.06, ks_pvalue=0.41, drifted=False)},
    )
    return replace(r, **changes)


def test_instruction_without_shadow_keeps_the_exact_old_payload_keys() -> None:
    obj = json.loads(make_instruction().to_payload())
    assert "shadow" not in obj and "shadow_sample_rate" not in obj


def test_signed_instruction_with_shadow_candidate_verifies_and_round_trips() -> None:
    instr = make_instruction(shadow=candidate_ref(), shadow_sample_rate=0.25)
    got = verify_instruction(sign_instruction(instr, FLEET_KEY), FLEET_KEY.public_key(),
                             device_id="dev-1", last_seq=7, now=NOW + 60)
    assert got == instr
    assert got.shadow is not None and got.shadow.sha256 == "f" * 64
    assert got.shadow_sample_rate == 0.25


def test_old_payload_without_shadow_fields_parses_with_shadow_off() -> None:
    obj = json.loads(make_instruction().to_payload())
    got = Instruction.from_payload(json.dumps(obj).encode())
    assert got.shadow is None and got.shadow_sample_rate == 0.0


@pytest.mark.parametrize("rate", [-0.1, 1.5, "0.5", True])
def test_shadow_sample_rate_outside_0_to_1_or_mistyped_is_refused(rate: Any) -> None:
    obj = json.loads(make_instruction().to_payload())
    obj["shadow"] = candidate_ref().to_dict()
    obj["shadow_sample_rate"] = rate
    with pytest.raises(InstructionError):
        Instruction.from_payload(json.dumps(obj).encode())


def test_malformed_shadow_bundle_is_refused_as_an_instruction_error() -> None:
    obj = json.loads(make_instruction().to_payload())
    obj["shadow"] = {**candidate_ref().to_dict(), "chunk_hashes": ["a" * 64]}
    with pytest.raises(InstructionError):
        Instruction.from_payload(json.dumps(obj).encode())


def test_shadow_report_round_trips_with_protocol_1() -> None:
    r = report()
    raw = r.to_bytes()
    assert json.loads(raw)["protocol"] == 1
    assert ShadowReport.from_bytes(raw) == r


def test_shadow_report_for_a_regressor_with_no_samples_round_trips_with_nulls() -> None:
    r = report(task="regression", samples=0, top1_agreement=None, score_delta_mean=None,
               mae=None, max_abs_error=None, cosine=None, latency_ms_active=None,
               latency_ms_candidate=None, drift={})
    obj = json.loads(r.to_bytes())
    assert obj["top1_agreement"] is None and obj["latency_ms_candidate"] is None
    assert obj["drift"] == {}
    assert ShadowReport.from_bytes(r.to_bytes()) == r


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("top1_agreement", 1.5),
        ("cosine", -2.0),
        ("mae", -1.0),
        ("samples", -1),
        ("candidate_fallback", "no"),
        ("candidate_sha256", "xyz"),
        ("drift", {"X": {"psi": 0.1, "ks_stat": 0.1, "ks_pvalue": 0.5, "drifted": 1}}),
        ("drift", {"X": {"psi": 0.1, "ks_stat": 2.0, "ks_pvalue": 0.5, "drifted": False}}),
        ("drift", [1]),
    ],
)
def test_shadow_report_with_out_of_range_or_mistyped_field_is_refused(key: str, value: Any) -> None:
    obj = json.loads(report().to_bytes())
    obj[key] = value
    with pytest.raises(ProtocolError):
        ShadowReport.from_bytes(json.dumps(obj).encode())


def test_shadow_report_with_too_many_drift_inputs_is_refused() -> None:
    obj = json.loads(report().to_bytes())
    d = {"psi": 0.0, "ks_stat": 0.0, "ks_pvalue": 1.0, "drifted": False}
    obj["drift"] = {f"in{i}": d for i in range(257)}
    with pytest.raises(ProtocolError, match="limit"):
        ShadowReport.from_bytes(json.dumps(obj).encode())


def test_shadow_topic_is_a_device_publication_the_server_subscribes_to() -> None:
    t = DeviceTopics("dev-1")
    assert t.shadow == "edgefleet/v1/devices/dev-1/shadow"
    assert parse_device_topic(t.shadow) == ("dev-1", "shadow")
    assert t.shadow in t.device_publications
    assert t.shadow not in t.device_subscriptions
    assert "edgefleet/v1/devices/+/shadow" in SERVER_SUBSCRIPTIONS
