"""The delta builder and rebuilder (model_bundles.delta_*), and the CLI around them: the
rebuild reproduces N+1 byte for byte, only changed tensors travel, a delta that does not
save enough or does not rebuild exactly is declined, and a hostile delta file is refused
with a precise reason and nothing written."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import onnx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from model_bundles import delta_build
from model_bundles import keys as mb_keys
from model_bundles.builder import build_bundle
from model_bundles.cli import main as cli
from model_bundles.delta_apply import apply_delta, apply_delta_stream
from model_bundles.delta_build import DeltaDeclined, base_opener, build_delta
from model_bundles.delta_format import DeltaError
from model_bundles.delta_onnx import initializer_spans
from model_bundles.samples import sample_model, write_sample_model

from .conftest import fine_tune_head


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """sample 1.0.0 (seed 0), 1.1.0 (its head fine-tuned), 2.0.0 (retrained: seed 5),
    other 1.0.0 (another name), and the publisher key pair."""
    root = tmp_path_factory.mktemp("delta-bundles")
    key, pub = mb_keys.generate_keypair(root / "keys")
    models = {"1.0.0": sample_model(0), "1.1.0": fine_tune_head(sample_model(0), 1),
              "2.0.0": sample_model(5)}
    out: dict[str, Path] = {"key": key, "pub": pub}
    for version, model in models.items():
        onnx.save_model(model, str(root / f"{version}.onnx"))
        out[version] = root / f"sample-{version}.efb"
        build_bundle([root / f"{version}.onnx"], name="sample", version=version,
                     key_path=key, out=out[version], task="classifier")
    out["other"] = root / "other.efb"
    build_bundle([write_sample_model(root / "o.onnx")], name="other", version="1.0.0",
                 key_path=key, out=out["other"])
    return out


def _key(b: dict[str, Path]) -> Ed25519PrivateKey:
    return mb_keys.load_private_key(b["key"])


def _rebuild(data: bytes, base: Path, key: Ed25519PrivateKey) -> bytes:
    opener, sha = base_opener(base)
    out = io.BytesIO()
    apply_delta_stream(io.BytesIO(data), len(data), opener, out, [key.public_key()],
                       base_sha256=sha)
    return out.getvalue()


def test_head_only_fine_tune_rebuilds_byte_for_byte_and_carries_only_the_head(
        bundles: dict[str, Path]) -> None:
    built = build_delta(bundles["1.0.0"], bundles["1.1.0"], _key(bundles))
    target = bundles["1.1.0"].read_bytes()
    assert _rebuild(built.data, bundles["1.0.0"], _key(bundles)) == target
    model = next(f for f in built.delta.files if f["path"] == "model.onnx")
    assert model["how"] == "tensors" and model["kept_tensors"] == 2
    assert sorted(t["name"] for t in model["changed_tensors"]) == ["b2", "w2"]
    head = sum(t["size"] for t in model["changed_tensors"])
    assert built.delta.payload_size < head + 4096  # the head, golden vectors, manifest
    assert len(built.data) < len(target) / 2
    assert built.delta.target_sha256 == hashlib.sha256(target).hexdigest()


def test_rebuild_to_a_file_is_atomic_and_checked_against_the_expected_target(
        bundles: dict[str, Path], tmp_path: Path) -> None:
    built = build_delta(bundles["1.0.0"], bundles["1.1.0"], _key(bundles))
    dpath = tmp_path / "d.efd"
    dpath.write_bytes(built.data)
    opener, sha = base_opener(bundles["1.0.0"])
    out = tmp_path / "rebuilt.efb"
    apply_delta(dpath, opener, out, [_key(bundles).public_key()], base_sha256=sha)
    assert out.read_bytes() == bundles["1.1.0"].read_bytes()
    wrong = tmp_path / "wrong.efb"
    with pytest.raises(DeltaError, match="the instruction asks for"):
        apply_delta(dpath, opener, wrong, [_key(bundles).public_key()], base_sha256=sha,
                    target_sha256="0" * 64, target_size=built.delta.target_size)
    with pytest.raises(DeltaError, match="delta is from sample@1.0.0"):
        apply_delta(dpath, opener, wrong, [_key(bundles).public_key()], base_sha256="1" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.efd", "rebuilt.efb"]


def test_a_delta_that_saves_too_little_is_declined_and_never_larger_than_the_bundle(
        bundles: dict[str, Path]) -> None:
    with pytest.raises(DeltaDeclined, match="over 10% of the"):
        build_delta(bundles["1.0.0"], bundles["1.1.0"], _key(bundles), max_ratio=0.1)
    try:  # a full retrain: every tensor changed
        built = build_delta(bundles["1.0.0"], bundles["2.0.0"], _key(bundles), max_ratio=1.0)
    except DeltaDeclined as e:
        assert "send the full bundle" in str(e)
    else:
        assert len(built.data) < bundles["2.0.0"].stat().st_size
        assert _rebuild(built.data, bundles["1.0.0"], _key(bundles)) == \
            bundles["2.0.0"].read_bytes()


def test_a_plan_that_would_not_rebuild_exactly_is_declined_at_build_time(
        bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    copy = delta_build._Plan.copy

    def off_by_one(self: delta_build._Plan, path: str, offset: int, length: int) -> None:
        copy(self, path, offset + 1 if offset + length < 1000 else offset, length)

    monkeypatch.setattr(delta_build._Plan, "copy", off_by_one)
    with pytest.raises(DeltaDeclined, match="does not rebuild sample@1.1.0 exactly"):
        build_delta(bundles["1.0.0"], bundles["1.1.0"], _key(bundles))


def test_versions_of_different_bundles_or_the_same_bytes_get_no_delta(
        bundles: dict[str, Path]) -> None:
    with pytest.raises(DeltaDeclined, match="base is other, target is sample"):
        build_delta(bundles["other"], bundles["1.1.0"], _key(bundles))
    with pytest.raises(DeltaDeclined, match="same bytes"):
        build_delta(bundles["1.0.0"], bundles["1.0.0"], _key(bundles))


def test_initializer_spans_point_at_each_tensors_raw_bytes() -> None:
    model = sample_model(0)
    data = model.SerializeToString()
    spans = initializer_spans(data)
    assert [s.name for s in spans] == ["w1", "b1", "w2", "b2"]
    raw = {i.name: i.raw_data for i in model.graph.initializer}
    for s in spans:
        assert data[s.offset:s.offset + s.size] == raw[s.name]


@pytest.mark.parametrize(("spoil", "reason"), [
    (lambda d: d[:3], "no EFD1 magic"),
    (lambda d: d[:4] + (2**31).to_bytes(4, "big") + d[8:], "description is 2147483648 bytes"),
    (lambda d: d[:50], "truncated in its description"),
    (lambda d: d + b"x", "its description says"),
    (lambda d: d[:-1], "its description says"),
    (lambda d: d[:20] + bytes([d[20] ^ 1]) + d[21:], "does not verify"),
])
def test_hostile_delta_files_are_refused_with_the_reason(
        bundles: dict[str, Path], spoil: object, reason: str) -> None:
    data = build_delta(bundles["1.0.0"], bundles["1.1.0"], _key(bundles)).data
    bad = spoil(data)  # type: ignore[operator]
    with pytest.raises(DeltaError, match=reason):
        _rebuild(bad, bundles["1.0.0"], _key(bundles))


def test_cli_delta_inspect_and_verify(bundles: dict[str, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d.efd"
    assert cli(["delta", str(bundles["1.0.0"]), str(bundles["1.1.0"]), "--key",
                str(bundles["key"]), "--out", str(out)]) == 0
    assert "1.0.0 -> 1.1.0" in capsys.readouterr().out
    assert cli(["inspect", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["signature_verified"] is False and doc["delta"]["target"]["version"] == "1.1.0"
    assert cli(["inspect", str(out)]) == 0
    assert "changed w2" in capsys.readouterr().out
    assert cli(["verify", str(out), "--trust", str(bundles["pub"]), "--base",
                str(bundles["1.0.0"])]) == 0
    assert "rebuilds its target exactly" in capsys.readouterr().out
    assert cli(["verify", str(out), "--trust", str(bundles["pub"]), "--base",
                str(bundles["1.1.0"])]) == 1
    assert "FAIL: bad delta: delta is from sample@1.0.0" in capsys.readouterr().out
    refused = tmp_path / "none.efd"
    assert cli(["delta", str(bundles["1.0.0"]), str(bundles["1.1.0"]), "--key",
                str(bundles["key"]), "--out", str(refused), "--max-ratio", "0.05"]) == 1
    assert "no delta: the delta would be" in capsys.readouterr().err
    assert not refused.exists()


def test_an_instruction_offers_a_delta_only_beside_a_bigger_bundle_other_than_its_base(
        bundles: dict[str, Path]) -> None:
    import time

    from ota.delta import DeltaRef
    from ota.errors import InstructionError, ProtocolError
    from ota.instructions import BundleRef, Instruction

    data = bundles["1.1.0"].read_bytes()
    ref = BundleRef(name="sample", version="1.1.0", sha256=hashlib.sha256(data).hexdigest(),
                    size=len(data), chunk_size=len(data), chunk_hashes=(
                        hashlib.sha256(data).hexdigest(),),
                    publisher_key_id="a" * 64,
                    publisher_public_key="-----BEGIN PUBLIC KEY-----\nx\n")
    delta = DeltaRef(base_sha256="b" * 64, sha256="c" * 64, size=100, chunk_size=100,
                     chunk_hashes=("d" * 64,))
    now = time.time()

    def instr(**kw: object) -> Instruction:
        return Instruction(device_id="dev-1", seq=1, issued_at=now, expires_at=now + 60,
                           deployment_id="d", **kw)  # type: ignore[arg-type]

    payload = instr(bundle=ref, delta=delta).to_payload()
    assert Instruction.from_payload(payload).delta == delta
    assert b'"delta"' not in instr(bundle=ref).to_payload()  # older bytes unchanged
    with pytest.raises(ProtocolError, match="delta needs a bundle other than its base"):
        instr(bundle=None, delta=delta)
    with pytest.raises(ProtocolError, match="delta needs a bundle other than its base"):
        instr(bundle=ref, delta=DeltaRef(base_sha256=ref.sha256, sha256="c" * 64, size=100,
                                         chunk_size=100, chunk_hashes=("d" * 64,)))
    big = DeltaRef(base_sha256="b" * 64, sha256="c" * 64, size=len(data), chunk_size=len(data),
                   chunk_hashes=("d" * 64,))
    with pytest.raises(InstructionError, match="is not smaller than the bundle"):
        Instruction.from_payload(instr(bundle=ref, delta=big).to_payload())
    with pytest.raises(ProtocolError, match="chunk_hashes has 1 entries"):
        DeltaRef(base_sha256="b" * 64, sha256="c" * 64, size=300, chunk_size=100,
                 chunk_hashes=("d" * 64,))
