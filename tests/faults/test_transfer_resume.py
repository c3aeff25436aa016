"""Transfer faults with real processes over a real Mosquitto: an agent killed mid-transfer and
a broker restarted mid-transfer both finish the download without starting over. An observer
client counts every chunk the device asks for, so "not from zero" is measured, not assumed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import wait_for

from . import crash_helpers
from .crash_helpers import CrashRig
from .mqtt_tools import ChunkRequestLog, Mosquitto

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]




@pytest.fixture
def observer(broker: Mosquitto) -> Iterator[ChunkRequestLog]:
    log = ChunkRequestLog(broker.port)
    yield log
    log.close()


def written_chunks(rig: CrashRig, sha256: str) -> set[int]:
    """Chunk indexes the part file's bitmap records as written (and fsynced)."""
    have_path = rig.dir / "downloads" / f"{sha256}.part.have"
    try:
        have = bytes.fromhex(json.loads(have_path.read_text())["have"])
    except (OSError, ValueError, KeyError):
        return set()
    return {i for i in range(len(have) * 8) if have[i // 8] & (1 << (i % 8))}


def only_bundle(rig: CrashRig) -> tuple[str, int]:
    (sha256,) = rig.manifests
    size = (rig.root / f"wide-{rig.versions[0]}.efb").stat().st_size
    return sha256, -(-size // (256 * 1024))


def test_agent_killed_mid_transfer_refetches_only_chunks_it_had_not_written(
        tmp_path: Path, broker: Mosquitto, observer: ChunkRequestLog) -> None:
    rig = CrashRig(tmp_path, versions=1, broker=broker.url)
    try:
        sha256, total = only_bundle(rig)
        assert total > 3
        rig.deploy("1.0.0")
        agent = rig.start({"EDGEFLEET_TEST_KILL_AT": "chunk:2"})
        wait_for(lambda: not agent.alive(), 60, "agent to die at chunk 2", ())
        assert agent.proc.returncode == -9, agent.output()
        kept = written_chunks(rig, sha256)
        assert kept == {0, 1, 2}
        assert rig.check_disk() is None  # nothing served, nothing partial in a slot

        restarted = time.monotonic()
        assert rig.restart_until_converged() == 1
        asked_again = observer.indexes(sha256, since=restarted)
        assert set(asked_again) == set(range(total)) - kept  # never a chunk already written
        assert len(asked_again) == total - len(kept)  # each missing one asked for once
        assert rig.converged() == {"served": "wide@1.0.0", "state": "committed"}
        assert not list((rig.dir / "downloads").glob("*"))  # part and bitmap gone
    finally:
        rig.stop()


def test_broker_restarted_during_transfer_completes_without_starting_from_zero(
        tmp_path: Path, broker: Mosquitto, observer: ChunkRequestLog,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crash_helpers, "WIDTH", 80_000)  # ~5 MB: about 20 chunks
    rig = CrashRig(tmp_path, versions=1, broker=broker.url)
    try:
        sha256, total = only_bundle(rig)
        assert total > 2 * 8  # more than two request windows
        rig.deploy("1.0.0")
        agent = rig.start({"EDGEFLEET_TEST_CHUNK_DELAY_S": "0.25"})
        wait_for(lambda: len(written_chunks(rig, sha256)) >= 3, 60, "3 chunks written",
                 (rig.fleet.server, agent))
        broker.stop()
        time.sleep(1.5)  # the agent drains what it had received, then finds no broker
        before_restart = written_chunks(rig, sha256)
        assert 3 <= len(before_restart) < total
        restarted = time.monotonic()
        broker.start()

        wait_for(rig.converged, 60, "convergence after the broker restart",
                 (rig.fleet.server, agent))
        assert rig.converged() == {"served": "wide@1.0.0", "state": "committed"}
        assert rig.check_disk() == "wide@1.0.0"
        asked_after = set(observer.indexes(sha256, since=restarted))
        assert asked_after, "the transfer resumed over the restarted broker"
        assert len(asked_after) < total
        assert not asked_after & before_restart  # nothing written before was fetched again
        assert broker.starts == 2
    finally:
        rig.stop()
