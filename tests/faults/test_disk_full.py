"""Disk full during staging on a REAL small filesystem: the agent's directory is a tmpfs
(``mount -t tmpfs``, so root with mount permission; skipped otherwise). The agent is killed
once its download is verified, another writer fills the disk, and the restarted agent's
extraction into the inactive slot hits a real ``ENOSPC``: the install fails cleanly, the
old model keeps serving, no partial slot is left, and once space returns a new instruction
installs the bundle."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_agent.slots import Slots
from device_agent.state_store import StateStore
from tests.e2e.harness import wait_for

from .crash_helpers import CrashRig

pytestmark = pytest.mark.e2e

LEAVE_FREE = 256 * 1024  # less than the ~1.5 MB model the slot needs


def try_mount_tmpfs(where: Path, size: str) -> str | None:
    """Mount a tmpfs at ``where``; the reason when this environment does not allow it."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "needs root and mount(8)"
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True, text=True, timeout=10)
    return None if r.returncode == 0 else f"mount -t tmpfs not permitted: {r.stderr.strip()}"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "agent"
    why = try_mount_tmpfs(where, "32m")
    if why is not None:
        pytest.skip(why)
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)


def test_disk_full_during_staging_fails_cleanly_and_recovers_when_space_returns(
        tmp_path: Path, small_disk: Path) -> None:
    rig = CrashRig(tmp_path)
    assert rig.dir == small_disk
    try:
        rig.deploy("1.0.0")
        assert rig.restart_until_converged() == 1
        rig.kill()

        rig.deploy("2.0.0")
        agent = rig.start({"EDGEFLEET_TEST_KILL_AT": "state:verified"})
        wait_for(lambda: not agent.alive(), 60, "agent to die once verified", ())
        assert StateStore(rig.dir).load_journal().state.value == "verified"

        ballast = rig.dir / "ballast"  # another writer fills the disk
        with open(ballast, "wb") as f:
            f.write(b"\0" * (shutil.disk_usage(rig.dir).free - LEAVE_FREE))
        assert shutil.disk_usage(rig.dir).free <= LEAVE_FREE

        agent = rig.start()
        wait_for(lambda: rig.converged() == {"served": "wide@1.0.0", "state": "failed"}, 60,
                 "the install to fail on a full disk", (rig.fleet.server, agent))
        j = StateStore(rig.dir).load_journal()
        assert j.version == "2.0.0" and "No space left on device" in (j.error or ""), j.error
        assert "injected" not in j.error  # a real ENOSPC, not the fault hook
        assert rig.check_disk() == "wide@1.0.0"  # old slot untouched, files as signed
        inactive = Slots(rig.dir).inactive()
        assert not Slots(rig.dir).path(inactive).exists()  # no partial slot left behind
        assert not list((rig.dir / "downloads").glob("*"))
        assert agent.alive()

        ballast.unlink()  # space returns
        rig.deploy("2.0.0")  # a new signed instruction for the same bundle
        wait_for(lambda: rig.converged() == {"served": "wide@2.0.0", "state": "committed"},
                 60, "the install once space returned", (rig.fleet.server, agent))
        assert rig.check_disk() == "wide@2.0.0"
    finally:
        rig.stop()
