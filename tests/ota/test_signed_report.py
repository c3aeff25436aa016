"""The device-signed report envelope (``ota.signed_report``): the signature covers exactly
the payload bytes received; another key, a bad encoding or a bare report are refused with
a one-line reason."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from model_bundles.keys import key_id
from ota.errors import ProtocolError
from ota.messages import Telemetry
from ota.signed_report import (
    ReportSignatureError,
    ReportSigner,
    UnsignedReportError,
    open_report,
    sign_report,
)

KEY = Ed25519PrivateKey.generate()
REPORT = Telemetry(device_id="dev-1", seq=7, ts=1.0, window_s=10.0, bundle=None,
                   delegate=None, inferences=1, errors=0, total_inferences=1,
                   total_errors=0).to_bytes()


def _envelope(**changes: str) -> bytes:
    env = json.loads(sign_report(REPORT, KEY))
    env.update(changes)
    return json.dumps(env).encode()


def test_signed_report_opens_to_the_exact_bytes_signed() -> None:
    envelope = sign_report(REPORT, KEY)
    assert open_report(envelope, KEY.public_key()) == REPORT
    env = json.loads(envelope)
    assert env["protocol"] == 1 and env["key_id"] == key_id(KEY.public_key())
    assert ReportSigner(KEY).sign(REPORT) == envelope  # Ed25519 is deterministic


@pytest.mark.parametrize(("envelope", "message"), [
    (sign_report(REPORT, Ed25519PrivateKey.generate()), "signed by key"),
    (_envelope(payload=base64.b64encode(REPORT.replace(b'"seq":7', b'"seq":8')).decode()),
     "signature does not verify"),
    (_envelope(signature="not base64!"), "'signature' is not base64"),
    (_envelope(key_id="zz"), "key_id must be 64 lower-case hex characters"),
    (_envelope(signature=""), "signature must not be empty"),
], ids=["another_key", "tampered_payload", "bad_base64", "bad_key_id", "empty_signature"])
def test_bad_envelopes_are_refused_with_the_reason(envelope: bytes, message: str) -> None:
    with pytest.raises(ReportSignatureError, match=message):
        open_report(envelope, KEY.public_key())


def test_bare_report_is_refused_as_unsigned() -> None:
    with pytest.raises(UnsignedReportError, match="unsigned report"):
        open_report(REPORT, KEY.public_key())


def test_bytes_that_are_no_protocol_message_are_a_protocol_error() -> None:
    for junk in (b"not json", b"[]", b'{"protocol": 2, "payload": "", "signature": ""}'):
        with pytest.raises(ProtocolError):
            open_report(junk, KEY.public_key())
