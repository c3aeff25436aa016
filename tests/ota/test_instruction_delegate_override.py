"""The optional ``delegate_override`` of a signed instruction: carried and verified with the
rest of the payload, absent from the bytes when unset, refused when malformed."""

from __future__ import annotations

import json

import pytest

from ota.errors import InstructionError, ProtocolError
from ota.instructions import DelegateOverride, Instruction, sign_instruction, verify_instruction
from tests.ota.test_ota_instructions import FLEET_KEY, NOW, make_instruction


def _verify(instr: Instruction) -> Instruction:
    return verify_instruction(sign_instruction(instr, FLEET_KEY), FLEET_KEY.public_key(),
                              device_id=instr.device_id, last_seq=0, now=NOW)


def test_override_travels_signed_and_round_trips() -> None:
    instr = make_instruction(delegate_override=DelegateOverride(variant="onnx-int8",
                                                                delegate="cuda"))
    got = _verify(instr)
    assert got.delegate_override == DelegateOverride("onnx-int8", "cuda")
    assert json.loads(instr.to_payload())["delegate_override"] == {
        "delegate": "cuda", "variant": "onnx-int8"}


def test_instruction_without_override_keeps_the_old_payload_bytes() -> None:
    instr = make_instruction()
    assert b"delegate_override" not in instr.to_payload()
    assert _verify(instr).delegate_override is None


def test_override_with_one_field_leaves_the_other_out() -> None:
    got = _verify(make_instruction(delegate_override=DelegateOverride(delegate="litert")))
    assert got.delegate_override == DelegateOverride(variant=None, delegate="litert")


@pytest.mark.parametrize("obj, fragment", [
    ({}, "needs a variant or a delegate"),
    ({"delegate": "cuda", "priority": 1}, "unknown keys"),
    ({"delegate": "../../etc"}, "delegate_override.delegate"),
    ({"variant": 5}, "variant"),
])
def test_malformed_override_is_refused_with_a_clear_error(obj: dict, fragment: str) -> None:
    payload = json.loads(make_instruction().to_payload())
    payload["delegate_override"] = obj
    raw = json.dumps(payload).encode()
    with pytest.raises(InstructionError, match="delegate_override|variant"):
        Instruction.from_payload(raw)
    with pytest.raises((InstructionError, ProtocolError)) as info:
        Instruction.from_payload(raw)
    assert fragment in str(info.value)
