"""Telemetry's optional execution summary (variant, fallback): carried when set, absent
from older-shaped payloads, and refused when mistyped."""

from __future__ import annotations

import json

import pytest

from ota.errors import ProtocolError
from ota.messages import Telemetry

BASE = dict(device_id="dev-1", seq=3, ts=1.0, window_s=10.0, bundle="m@1.0.0",
            delegate="onnxruntime:CPUExecutionProvider", inferences=5, errors=0,
            total_inferences=9, total_errors=0)


def test_fallback_window_round_trips_with_its_variant() -> None:
    tel = Telemetry(**BASE, variant="onnx-int8", fallback=True)
    got = Telemetry.from_bytes(tel.to_bytes())
    assert (got.variant, got.fallback) == ("onnx-int8", True)


def test_summary_fields_are_left_out_when_unset() -> None:
    raw = Telemetry(**BASE).to_bytes()
    assert b"fallback" not in raw and b"variant" not in raw
    assert Telemetry.from_bytes(raw).fallback is None


def test_non_boolean_fallback_is_refused() -> None:
    obj = json.loads(Telemetry(**BASE).to_bytes())
    obj["fallback"] = "yes"
    with pytest.raises(ProtocolError, match="fallback"):
        Telemetry.from_bytes(json.dumps(obj).encode())


def test_an_override_record_in_the_execution_proof_is_typed() -> None:
    import pytest

    from ota.errors import ProtocolError
    from ota.messages import check_execution

    base = {"requested": "cpu", "delegate": "onnxruntime:CPUExecutionProvider", "fallback": False}
    check_execution({**base, "override": {"requested": "delegate=cuda", "honoured": False}}, "e")
    with pytest.raises(ProtocolError, match="override.honoured"):
        check_execution({**base, "override": {"requested": "delegate=cuda", "honoured": "no"}}, "e")
    with pytest.raises(ProtocolError, match="override must be an object"):
        check_execution({**base, "override": ["cuda"]}, "e")
