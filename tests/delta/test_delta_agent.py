"""The agent's delta path, in process (real slots, real ONNX Runtime, signed instructions,
chunks checked against their signed hashes): a head-only fine-tune installs from a delta
byte for byte; every kind of failure falls back to the full bundle, says why in the
device's history and leaves no delta file behind; a device that does not serve the delta's
base fetches the bundle; a restart resumes the delta."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from model_bundles.delta_build import build_delta
from model_bundles.delta_format import Delta, encode_delta, sign_description
from ota.install import InstallState
from ota.updater.core import delta_as_ref
from ota.updater.transfer import Role

from .conftest import Rig, delta_ref, instruct, make_delta


def _events(rig: Rig, kind: str) -> list[str]:
    return [r.payload.decode() for r in rig.agent.outbox.pending()
            if f'"kind":"{kind}"'.encode() in r.payload]


def _slot_files(rig: Rig) -> dict[str, str]:
    cur = rig.agent.slots.current()
    assert cur is not None
    root = rig.agent.slots.path(cur.slot)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _leftovers(rig: Rig) -> list[str]:
    return sorted(p.name for p in (rig.agent_dir / "downloads").glob("*"))


def _predict(rig: Rig, x: np.ndarray) -> np.ndarray:
    return np.asarray(rig.agent.predict({"features": x}).outputs["scores"])


def test_head_only_fine_tune_installs_from_a_delta_byte_for_byte(
        rig: Rig, head_tuned: tuple[Path, Path]) -> None:
    v1 = rig.tmp / "sample-1.0.0.efb"
    path, ref = rig.build("1.1.0", model=head_tuned[0])
    dpath, dref = make_delta(rig, v1, path)
    assert dref.size < ref.size / 2
    rig.agent._handle_desired(instruct(rig, ref, dref))
    assert set(rig.agent.core.transfers) == {Role.DELTA}  # the delta, not the bundle
    assert rig.agent.store.record.delta == dref
    rig.deliver(dpath, delta_as_ref(dref, ref))

    assert rig.agent.journal.state is InstallState.COMMITTED, rig.agent.journal
    assert rig.agent.slots.current().sha256 == ref.sha256  # type: ignore[union-attr]
    assert rig.agent.store.record.delta is None
    assert _leftovers(rig) == []
    assert rig.errors() == []
    [done] = [e for e in _events(rig, "agent") if "delta: rebuilt" in e]
    assert "sample@1.1.0 from sample@1.0.0" in done
    files = _slot_files(rig)
    assert files["files/model.onnx"] == hashlib.sha256(head_tuned[0].read_bytes()).hexdigest()
    x = np.random.default_rng(3).standard_normal((8, 16)).astype(np.float32)
    expect = ort.InferenceSession(str(head_tuned[0]), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(_predict(rig, x), expect.run(["scores"], {"features": x})[0])


def _resign(rig: Rig, data: bytes, change: Callable[[Delta], Delta],
            key: Ed25519PrivateKey | None = None) -> bytes:
    """The delta with its description changed and signed again (by ``key`` or the fleet)."""
    dlen = int.from_bytes(data[4:8], "big")
    slen = int.from_bytes(data[8 + dlen:12 + dlen], "big")
    description = Delta.from_bytes(data[8:8 + dlen])
    payload = data[12 + dlen + slen:]
    new = change(description).to_bytes()
    return encode_delta(new, sign_description(new, key or rig.fleet_key), payload)


def _flip_payload(rig: Rig, data: bytes) -> bytes:
    out = bytearray(data)
    out[-200] ^= 0xFF
    return bytes(out)


# (name, how the delta is spoiled (rig, bytes, v1.2 delta bytes) -> bytes, what the device
# does to itself first, the reason expected in its history)
FAILURES: list[tuple[str, Callable[[Rig, bytes, bytes], bytes], str, str]] = [
    ("signed_by_an_untrusted_key",
     lambda rig, d, other: _resign(rig, d, lambda x: x, Ed25519PrivateKey.generate()),
     "", "not a trusted key"),
    ("payload_corrupted_after_signing", lambda rig, d, other: _flip_payload(rig, d),
     "", "payload does not match"),
    ("rebuilds_another_version_than_the_instruction", lambda rig, d, other: other,
     "", "the instruction asks for"),
    ("signed_description_lies_about_its_target",
     lambda rig, d, other: _resign(rig, other, lambda x: dataclasses.replace(
         x, target_sha256=Delta.from_bytes(d[8:8 + int.from_bytes(d[4:8], "big")])
         .target_sha256)),
     "", "rebuilt sample@1.2.0 has sha256"),
    ("base_file_changed_in_the_active_slot", lambda rig, d, other: d,
     "tamper", "does not match the delta's base"),
    ("base_file_missing_from_the_active_slot", lambda rig, d, other: d,
     "delete", "base file model.onnx is missing"),
    ("disk_full_while_rebuilding", lambda rig, d, other: d,
     "enospc", "No space left on device"),
    ("not_a_delta_file", lambda rig, d, other: b"PK\x03\x04" + d[4:], "", "no EFD1 magic"),
]


@pytest.mark.parametrize(("spoil", "prepare", "reason"),
                         [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES])
def test_any_delta_failure_falls_back_to_the_full_bundle_and_says_why(
        rig: Rig, head_tuned: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        spoil: Callable[[Rig, bytes, bytes], bytes], prepare: str, reason: str) -> None:
    v1 = rig.tmp / "sample-1.0.0.efb"
    path, ref = rig.build("1.1.0", model=head_tuned[0])
    other_path, _ = rig.build("1.2.0", model=head_tuned[1])
    good = build_delta(v1, path, rig.fleet_key).data
    other = build_delta(v1, other_path, rig.fleet_key).data
    bad = spoil(rig, good, other)
    dref = delta_ref(bad, hashlib.sha256(v1.read_bytes()).hexdigest())  # its chunks "sign"
    dpath = rig.tmp / "bad.efd"
    dpath.write_bytes(bad)
    served = rig.agent.slots.path(rig.agent.slots.current().slot)  # type: ignore[union-attr]
    if prepare == "tamper":
        (served / "files" / "model.onnx").write_bytes(b"\0" * 100)
    elif prepare == "delete":
        (served / "files" / "model.onnx").unlink()
    elif prepare == "enospc":
        monkeypatch.setenv("EDGEFLEET_TEST_ENOSPC_AT", "rebuild")

    rig.agent._handle_desired(instruct(rig, ref, dref))
    rig.deliver(dpath, delta_as_ref(dref, ref))

    [why] = [e for e in rig.errors() if "delta update of sample@1.1.0 failed" in e]
    assert reason in why and "fetching the full bundle" in why
    assert set(rig.agent.core.transfers) == {Role.BUNDLE}  # fell back
    assert rig.agent.store.record.delta is None
    assert rig.agent.journal.state is InstallState.DOWNLOADING
    assert not [n for n in _leftovers(rig) if n.startswith(dref.sha256)]
    monkeypatch.delenv("EDGEFLEET_TEST_ENOSPC_AT", raising=False)
    rig.deliver(path, ref)
    assert rig.agent.journal.state is InstallState.COMMITTED, rig.agent.journal
    assert rig.agent.slots.current().sha256 == ref.sha256  # type: ignore[union-attr]
    assert _leftovers(rig) == []


def test_a_corrupt_delta_chunk_falls_back_at_once(rig: Rig,
                                                  head_tuned: tuple[Path, Path]) -> None:
    v1 = rig.tmp / "sample-1.0.0.efb"
    path, ref = rig.build("1.1.0", model=head_tuned[0])
    dpath, dref = make_delta(rig, v1, path)
    spoiled = bytearray(dpath.read_bytes())
    spoiled[5] ^= 0x01  # in chunk 0, whose signed hash no longer matches
    dpath.write_bytes(bytes(spoiled))
    rig.agent._handle_desired(instruct(rig, ref, dref))
    rig.deliver(dpath, delta_as_ref(dref, ref))
    [why] = [e for e in rig.errors() if "delta update" in e]
    assert "chunk 0" in why
    assert set(rig.agent.core.transfers) == {Role.BUNDLE}
    rig.deliver(path, ref)
    assert rig.agent.journal.state is InstallState.COMMITTED


def test_a_device_that_does_not_serve_the_base_fetches_the_bundle(
        rig: Rig, head_tuned: tuple[Path, Path]) -> None:
    v1 = rig.tmp / "sample-1.0.0.efb"
    path11, ref11 = rig.build("1.1.0", model=head_tuned[0])
    path12, ref12 = rig.build("1.2.0", model=head_tuned[1])
    _, dref = make_delta(rig, path11, path12)  # from 1.1.0, which this device lacks
    rig.agent._handle_desired(instruct(rig, ref12, dref))
    assert set(rig.agent.core.transfers) == {Role.BUNDLE}
    assert rig.agent.store.record.delta is None
    rig.deliver(path12, ref12)
    assert rig.agent.journal.state is InstallState.COMMITTED
    assert not [e for e in _events(rig, "agent") if "delta" in e]
    assert v1.exists()


def test_a_restart_mid_delta_resumes_the_delta(rig: Rig,
                                               head_tuned: tuple[Path, Path]) -> None:
    v1 = rig.tmp / "sample-1.0.0.efb"
    path, ref = rig.build("1.1.0", model=head_tuned[0])
    dpath, dref = make_delta(rig, v1, path)
    rig.agent._handle_desired(instruct(rig, ref, dref))
    pseudo = delta_as_ref(dref, ref)
    from ota.chunks import encode_chunk_frame, read_chunk
    from ota.instructions import chunk_count

    total = chunk_count(dref.size, dref.chunk_size)
    rig.agent._handle_chunk(encode_chunk_frame(dref.sha256, 0, total,
                                               read_chunk(dpath, 0, dref.chunk_size)))
    install = rig.agent.device_state().install
    assert install is not None and install.progress == 1 / total  # the delta's progress
    agent = rig.restart()
    assert set(agent.core.transfers) == {Role.DELTA}
    assert agent.core.transfers[Role.DELTA].missing == set(range(1, total))
    rig.deliver(dpath, pseudo)
    assert agent.journal.state is InstallState.COMMITTED
    assert agent.slots.current().sha256 == ref.sha256  # type: ignore[union-attr]
