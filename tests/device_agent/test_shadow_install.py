"""The shadow candidate travels in verified chunks, is verified and extracted into
DIR/shadow/<sha>/ (never an A/B slot), must pass its golden gate, and only then runs in
shadow; a tampered bundle is refused with nothing staged; dropping shadow cleans up; a
restart resumes from the persisted state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device_agent.shadow import ShadowRunner
from device_agent.shadow_install import ShadowStager
from model_bundles.builder import build_bundle
from model_bundles.keys import generate_keypair, key_id, load_private_key, public_key_pem
from ota import chunks as ota_chunks
from ota.instructions import BundleRef
from ota.messages import ChunkRequest

CHUNK = 4096


@pytest.fixture
def candidate_bundle(tmp_path: Path, sample_onnx: Path) -> tuple[Path, BundleRef]:
    priv, _ = generate_keypair(tmp_path / "keys")
    golden = tmp_path / "golden.npz"
    np.savez(golden, features=np.random.default_rng(0).standard_normal((32, 16)).astype(
        np.float32))
    out = tmp_path / "cand.efb"
    build_bundle([sample_onnx], name="sample", version="2.0.0", key_path=priv, out=out,
                 golden=golden, task="classifier")
    key = load_private_key(priv)
    ref = BundleRef(name="sample", version="2.0.0", sha256=ota_chunks.file_sha256(out),
                    size=out.stat().st_size, chunk_size=CHUNK,
                    chunk_hashes=tuple(ota_chunks.file_chunk_hashes(out, CHUNK)),
                    publisher_key_id=key_id(key), publisher_public_key=public_key_pem(key))
    return out, ref


def feed(stager: ShadowStager, requests: list[bytes], bundle: Path, ref: BundleRef,
         tamper: bool = False) -> None:
    """Answer chunk requests like the server does, until none is left."""
    while requests:
        req = ChunkRequest.from_bytes(requests.pop(0))
        for i in range(req.index, req.index + req.count):
            data = ota_chunks.read_chunk(bundle, i, CHUNK)
            assert stager.handle_chunk(ota_chunks.encode_chunk_frame(
                ref.sha256, i, len(ref.chunk_hashes), data))


def test_candidate_is_fetched_verified_staged_outside_the_slots_and_shadowed(
    tmp_path: Path, candidate_bundle: tuple[Path, BundleRef]
) -> None:
    bundle, ref = candidate_bundle
    agent_dir = tmp_path / "agent"
    requests: list[bytes] = []
    runner = ShadowRunner()
    errors: list[str] = []
    stager = ShadowStager(agent_dir, runner, device_id="dev-1",
                          publish_request=requests.append, on_error=errors.append)
    stager.apply(ref, 0.5)
    assert requests and stager.downloading
    feed(stager, requests, bundle, ref)
    assert errors == []
    cand = runner.candidate
    assert cand is not None and cand.sha256 == ref.sha256 and cand.sample_rate == 0.5
    assert cand.runtime.bundle == "sample@2.0.0"
    assert cand.reference is not None and "features" in cand.reference.inputs
    staged = agent_dir / "shadow" / ref.sha256
    assert (staged / "manifest.json").exists() and (staged / "files" / "model.onnx").exists()
    assert not (agent_dir / "slots").exists()  # no A/B slot was touched
    assert not list((agent_dir / "shadow").glob("*.part")) and not list(
        (agent_dir / "shadow").glob("*.efb"))

    stager.apply(ref, 0.1)  # same candidate, new rate: no download
    assert runner.candidate is not None and runner.candidate.sample_rate == 0.1
    assert requests == []

    # a restart resumes the staged candidate without fetching it again
    runner2 = ShadowRunner()
    again = ShadowStager(agent_dir, runner2, device_id="dev-1", publish_request=requests.append)
    again.restore()
    assert runner2.candidate is not None and runner2.candidate.sample_rate == 0.1
    assert requests == []
    runner2.stop()

    stager.apply(None, 0.0)  # shadow dropped: stopped and cleaned up
    assert runner.candidate is None and not (agent_dir / "shadow").exists()
    runner.stop()


def test_candidate_signed_by_another_key_is_refused_and_nothing_is_staged(
    tmp_path: Path, candidate_bundle: tuple[Path, BundleRef], sample_onnx: Path
) -> None:
    _, ref = candidate_bundle
    priv, _ = generate_keypair(tmp_path / "other")
    forged = tmp_path / "forged.efb"
    build_bundle([sample_onnx], name="sample", version="2.0.0", key_path=priv, out=forged)
    # the instruction pins the genuine publisher key, the bytes are signed by another one
    bad_ref = BundleRef(name=ref.name, version=ref.version,
                        sha256=ota_chunks.file_sha256(forged), size=forged.stat().st_size,
                        chunk_size=CHUNK,
                        chunk_hashes=tuple(ota_chunks.file_chunk_hashes(forged, CHUNK)),
                        publisher_key_id=ref.publisher_key_id,
                        publisher_public_key=ref.publisher_public_key)
    requests: list[bytes] = []
    errors: list[str] = []
    runner = ShadowRunner()
    stager = ShadowStager(tmp_path / "agent", runner, device_id="dev-1",
                          publish_request=requests.append, on_error=errors.append)
    stager.apply(bad_ref, 1.0)
    feed(stager, requests, forged, bad_ref)
    assert runner.candidate is None
    assert errors and "refused" in errors[0]
    assert not (tmp_path / "agent" / "shadow" / bad_ref.sha256).exists()
    assert not list((tmp_path / "agent" / "shadow").glob("*.efb"))


def test_chunks_of_other_bundles_are_left_to_the_agent(
    tmp_path: Path, candidate_bundle: tuple[Path, BundleRef]
) -> None:
    bundle, ref = candidate_bundle
    stager = ShadowStager(tmp_path / "agent", ShadowRunner(), device_id="dev-1",
                          publish_request=lambda b: None)
    frame = ota_chunks.encode_chunk_frame("a" * 64, 0, 1, b"x")
    assert stager.handle_chunk(frame) is False  # no shadow download under way
    stager.apply(ref, 1.0)
    assert stager.handle_chunk(frame) is False  # another bundle's chunk
    assert stager.handle_chunk(b"garbage") is False
