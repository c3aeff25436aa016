"""Crash safety with real processes: ``device-agent run`` SIGKILLed at every install state
transition and at random points during download, verify, stage, switch and commit, against
a real fleet server and broker. After every kill the disk holds nothing partial to serve;
after restart the device serves a signed model, reports its true state and converges within
three restarts. ``python -m bench.crash --kills 500`` runs the random part at scale."""

from __future__ import annotations

import collections
import os
import random
from pathlib import Path

import pytest

from tests.e2e.harness import wait_for

from .crash_helpers import CrashRig

pytestmark = pytest.mark.e2e

KILL_POINTS = ["state:offered", "state:downloading", "chunk:2", "state:verified",
               "state:staged", "state:trial", "switch", "state:committed"]
RANDOM_KILLS = int(os.environ.get("EDGEFLEET_TEST_RANDOM_KILLS", "50"))


@pytest.fixture
def rig(tmp_path: Path) -> CrashRig:
    r = CrashRig(tmp_path)
    yield r
    r.stop()


def test_agent_killed_at_every_transition_and_at_random_points_never_serves_a_partial_slot(
        rig: CrashRig) -> None:
    rig.deploy(rig.versions[0])
    assert rig.restart_until_converged() == 1
    assert rig.check_disk() == "wide@1.0.0"
    rig.kill()

    for i, point in enumerate(KILL_POINTS):
        target = rig.versions[(i + 1) % 2]
        rig.deploy(target)
        agent = rig.start({"EDGEFLEET_TEST_KILL_AT": point})
        wait_for(lambda a=agent: not a.alive(), 60, f"agent to die at {point}", ())
        assert agent.proc.returncode == -9, agent.output()
        served = rig.check_disk()
        assert served in (f"wide@{v}" for v in rig.versions), (point, served)
        assert rig.restart_until_converged() <= 3, point
        result = rig.converged()
        assert result is not None
        # the kill never costs the update: the device ends on the deployed version
        assert result == {"served": f"wide@{target}", "state": "committed"}, (point, result)
        rig.kill()

    seen = rig.random_kills(RANDOM_KILLS, random.Random(3))
    print("kills left:", sorted(collections.Counter(seen).items()))
    assert len(seen) == RANDOM_KILLS
    assert rig.restart_until_converged() <= 3
    final = rig.converged()
    assert final is not None and final["served"] in (f"wide@{v}" for v in rig.versions)
    assert rig.check_disk() == final["served"]
