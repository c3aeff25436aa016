"""Report signatures checked by libsodium (``fleet_server.report_keys``), and the verifier's
key cache filled a batch at a time (``ReportVerifier.preload``): real keys, real signatures,
a real SQLite registry."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fleet_server.db import open_database
from fleet_server.registry import Registry
from fleet_server.report_book import ReportBook
from fleet_server.report_keys import SodiumKey
from fleet_server.report_verify import ReportRejected, ReportVerifier
from model_bundles import keys as mb_keys
from model_bundles.errors import KeyFileError
from ota.messages import LatencySummary, Telemetry
from ota.signed_report import ReportSignatureError, ReportSigner, open_report


def _telemetry(device: str, seq: int) -> Telemetry:
    return Telemetry(device_id=device, seq=seq, ts=time.time(), window_s=10.0, bundle=None,
                     delegate="cpu", inferences=1, errors=0, total_inferences=seq,
                     total_errors=0, latency_ms=LatencySummary(1.0, 2.0, 3.0))


def test_libsodium_and_openssl_agree_on_every_signature() -> None:
    """The same verdict as ``cryptography`` on good signatures, on each flipped bit of
    payload and signature, on another key's signature and on a short one."""
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    sodium = SodiumKey.from_pem(mb_keys.public_key_pem(key))
    assert sodium.key_id == mb_keys.key_id(key)
    for n in range(8):
        data = bytes(range(n * 37 % 256)) * (n + 1)
        sig = key.sign(data)
        assert sodium.verify(sig, data)
        for at in (0, 31, 32, 63):
            bad = bytearray(sig)
            bad[at] ^= 1 << n % 8
            assert not sodium.verify(bytes(bad), data)
        if data:
            assert not sodium.verify(sig, data[:-1] + bytes([data[-1] ^ 1]))
        assert not sodium.verify(other.sign(data), data)
        assert not sodium.verify(sig[:63], data)
        assert not sodium.verify(sig + b"\0", data)


def test_open_report_takes_either_key_and_refuses_the_same() -> None:
    key = Ed25519PrivateKey.generate()
    envelope = ReportSigner(key).sign(_telemetry("dev-1", 1).to_bytes())
    sodium = SodiumKey.from_pem(mb_keys.public_key_pem(key))
    assert open_report(envelope, sodium) == open_report(envelope, key.public_key())
    tampered = envelope.replace(b'"signature":"', b'"signature":"AA', 1)
    for public in (sodium, key.public_key()):
        with pytest.raises(ReportSignatureError, match="does not verify|not base64"):
            open_report(tampered, public)
    stranger = SodiumKey.from_pem(mb_keys.public_key_pem(Ed25519PrivateKey.generate()))
    with pytest.raises(ReportSignatureError, match="signed by key"):
        open_report(envelope, stranger)


def test_a_key_that_is_not_ed25519_is_refused() -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(KeyFileError):
        SodiumKey.from_pem(ec_pem)
    with pytest.raises(ValueError, match="32 bytes"):
        SodiumKey(b"\1" * 31)


@pytest.fixture()
def registry(tmp_path: Path) -> Registry:
    return Registry(open_database(tmp_path / "registry.db"))


def test_preload_reads_a_batchs_keys_once_and_reports_then_need_no_read(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = {f"dev-{i}": Ed25519PrivateKey.generate() for i in range(3)}
    for device, key in keys.items():
        registry.add_device(device_id=device, group="g", public_key=mb_keys.public_key_pem(key),
                            mqtt_secret_hash="h")
    registry.add_device(device_id="keyless", group="g", public_key="not a key",
                        mqtt_secret_hash="h")
    now = [100.0]
    verifier = ReportVerifier(registry=registry, book=ReportBook(registry._db),  # noqa: SLF001
                              clock=lambda: now[0])
    queries: list[list[str]] = []
    read = registry.public_keys
    monkeypatch.setattr(registry, "public_keys",
                        lambda *, device_ids: queries.append(device_ids) or read(
                            device_ids=device_ids))
    assert verifier.preload([*keys, "keyless", "ghost", "dev-0"]) == 3
    assert queries == [["dev-0", "dev-1", "dev-2", "ghost", "keyless"]]

    def no_read(**_: object) -> None:
        raise AssertionError("a report read the registry")
    monkeypatch.setattr(registry, "get_device", no_read)
    for seq, (device, key) in enumerate(keys.items(), 1):
        envelope = ReportSigner(key).sign(_telemetry(device, seq).to_bytes())
        report = verifier.open(device, "telemetry", envelope)
        assert report is not None and report.seq == seq
    assert verifier.preload(keys) == 0  # all cached: no query
    assert len(queries) == 1
    now[0] += 11.0  # past KEY_TTL_S: read again, in one query
    assert verifier.preload(keys) == 3 and len(queries) == 2
    monkeypatch.undo()
    with pytest.raises(ReportRejected) as refused:  # left to open, which says why
        verifier.open("keyless", "telemetry", b"{}")
    assert refused.value.reason == "unknown_device"
