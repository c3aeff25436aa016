"""The shadow candidate travels through the same Transfer as the bundle (signed chunks),
is verified and extracted into DIR/shadow/<sha>/ (never an A/B slot), must pass its golden
gate, and only then runs in shadow; a bad candidate is refused with nothing staged;
dropping shadow cleans up; a restart resumes from the device record."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from device_agent.agent import Agent
from model_bundles import keys
from ota.chunks import encode_chunk_frame
from ota.updater.record import ShadowRecord
from ota.updater.transfer import Role
from tests.faults.test_http_fetch_stop import RangeServer

from .conftest import Rig


def _slots(rig: Rig) -> dict[str, str]:
    root = rig.agent_dir / "slots"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_candidate_is_fetched_verified_staged_outside_the_slots_and_shadowed(rig: Rig) -> None:
    slots = _slots(rig)
    path, ref = rig.build("2.0.0")
    rig.agent._handle_desired(rig.instruction(None, shadow=ref, rate=0.5))
    assert rig.agent.core.transfers[Role.SHADOW].ref == ref
    rig.deliver(path, ref)
    cand = rig.agent.shadow.candidate
    assert rig.errors() == []
    assert cand is not None and cand.sha256 == ref.sha256 and cand.sample_rate == 0.5
    assert cand.runtime.bundle == "sample@2.0.0"
    staged = rig.agent_dir / "shadow" / ref.sha256
    assert (staged / "manifest.json").exists() and (staged / "files" / "model.onnx").exists()
    assert _slots(rig) == slots  # no A/B slot was touched
    assert not list((rig.agent_dir / "shadow").glob("*.part"))
    assert not list((rig.agent_dir / "shadow").glob("*.efb"))
    assert rig.agent.store.record.shadow == ShadowRecord(ref, 0.5)

    rig.agent._handle_desired(rig.instruction(None, shadow=ref, rate=0.1))  # new rate only
    assert rig.agent.shadow.candidate is not None
    assert rig.agent.shadow.candidate.sample_rate == 0.1
    assert Role.SHADOW not in rig.agent.core.transfers  # nothing fetched again

    agent = rig.restart()  # resumes the staged candidate without fetching it
    assert agent.shadow.candidate is not None and agent.shadow.candidate.sample_rate == 0.1
    assert agent.core.transfers == {}

    agent._handle_desired(rig.instruction(None))  # shadow dropped: stopped and cleaned up
    assert agent.shadow.candidate is None and not (rig.agent_dir / "shadow").exists()
    assert agent.store.record.shadow is None
    agent.shadow.stop()


def test_a_restart_mid_transfer_resumes_the_candidate_from_its_part_file(rig: Rig) -> None:
    path, ref = rig.build("2.0.0")
    rig.agent._handle_desired(rig.instruction(None, shadow=ref, rate=1.0))
    total = len(ref.chunk_hashes)
    data = path.read_bytes()
    rig.agent._handle_chunk(encode_chunk_frame(ref.sha256, 0, total, data[:ref.chunk_size]))
    agent = rig.restart()
    assert agent.core.transfers[Role.SHADOW].missing == set(range(1, total))
    rig.deliver(path, ref)
    assert agent.shadow.candidate is not None and agent.shadow.candidate.sha256 == ref.sha256
    agent.shadow.stop()


def test_candidate_signed_by_another_key_is_refused_and_nothing_is_staged(
        rig: Rig, tmp_path: Path) -> None:
    slots = _slots(rig)
    stranger, _ = keys.generate_keypair(tmp_path / "stranger")
    path, ref = rig.build("2.0.0", key_path=stranger)  # the ref pins the genuine publisher
    rig.agent._handle_desired(rig.instruction(None, shadow=ref, rate=1.0))
    rig.deliver(path, ref)
    assert rig.agent.shadow.candidate is None
    errors = rig.errors()
    assert errors and "shadow bundle sample@2.0.0 refused" in errors[-1]
    assert not (rig.agent_dir / "shadow").exists()
    assert _slots(rig) == slots
    rec = rig.agent.store.record.shadow
    assert rec is not None and rec.failed and "refused" in rec.failed
    assert rig.restart().shadow.candidate is None  # a refused candidate is not retried


def test_chunks_of_other_bundles_are_ignored(rig: Rig) -> None:
    path, ref = rig.build("2.0.0")
    rig.agent._handle_desired(rig.instruction(None, shadow=ref, rate=1.0))
    before = set(rig.agent.core.transfers[Role.SHADOW].missing)
    rig.agent._handle_chunk(encode_chunk_frame("a" * 64, 0, 1, b"x"))  # another bundle's
    assert rig.agent.core.transfers[Role.SHADOW].missing == before
    assert rig.agent.shadow.candidate is None


def test_a_large_candidate_comes_over_the_http_range_path(rig: Rig) -> None:
    """From ``http_download_min_bytes`` on, the candidate is fetched like a large bundle:
    ranges over HTTP, each chunk checked against the signed instruction."""
    path, ref = rig.build("2.0.0")
    server = RangeServer(path)
    try:
        rig.agent.shadow.stop()
        config = dataclasses.replace(rig.agent.config, server_url=server.url,
                                     http_download_min_bytes=0)
        rig.agent = Agent(rig.agent_dir, config=config)
        rig.agent._handle_desired(rig.instruction(None, shadow=ref, rate=1.0))
    finally:
        server.close()
    assert sorted(server.asked) == list(range(len(ref.chunk_hashes)))
    cand = rig.agent.shadow.candidate
    assert cand is not None and cand.sha256 == ref.sha256, rig.errors()
    assert rig.agent.core.transfers == {}
    rig.agent.shadow.stop()
