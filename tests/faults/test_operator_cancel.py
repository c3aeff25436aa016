"""Operator cancel with a real fleet server and agent: a slow transfer is cancelled with
``fleet-server cancel``; the device stops, deletes its part file, keeps serving what it
served, and the server shows the target ``cancelled`` under a newer instruction."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from device_agent.slots import Slots
from device_agent.state_store import StateStore
from tests.e2e.harness import wait_for

from . import crash_helpers
from .crash_helpers import CrashRig
from .test_transfer_resume import only_bundle, written_chunks

pytestmark = pytest.mark.e2e


def test_operator_cancels_a_deployment_in_the_middle_of_its_transfer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crash_helpers, "WIDTH", 80_000)  # about 20 chunks: several windows
    rig = CrashRig(tmp_path, versions=1)
    try:
        sha256, total = only_bundle(rig)
        rig.deploy("1.0.0")
        agent = rig.start({"EDGEFLEET_TEST_CHUNK_DELAY_S": "0.2"})
        wait_for(lambda: written_chunks(rig, sha256), 60, "the transfer to start",
                 (rig.fleet.server, agent))

        out = rig.fleet.cli("fleet-server", "cancel", "dep-1", "--json").stdout
        target = json.loads(out)["targets"][0]
        assert (target["state"], target["error"]) == ("cancelled", "cancelled by operator")
        assert target["instruction_seq"] == 2  # a new signed instruction, never a replay

        wait_for(lambda: crash_helpers.cancelled_and_applied(rig.dir, 2), 30,
                 "the agent to drop the transfer and apply instruction 2",
                 (rig.fleet.server, agent))
        store = StateStore(rig.dir)
        assert store.applied_seq == 2
        assert len(written_chunks(rig, sha256)) < total  # it really was mid-transfer
        wait_for(lambda: not list((rig.dir / "downloads").glob("*")), 10, "part file deleted",
                 (agent,))
        assert Slots(rig.dir).current() is None  # still serving what it served: nothing
        assert agent.alive()

        dep = httpx.get(f"{rig.fleet.url}/api/v1/deployments/dep-1", headers=rig.headers,
                        timeout=5).json()
        assert [t["state"] for t in dep["targets"]] == ["cancelled"]
        again = httpx.post(f"{rig.fleet.url}/api/v1/deployments/dep-1/cancel",
                           headers=rig.headers, timeout=5)
        assert again.status_code == 200 and again.json()["targets"][0]["instruction_seq"] == 2
        missing = httpx.post(f"{rig.fleet.url}/api/v1/deployments/dep-9/cancel",
                             headers=rig.headers, timeout=5)
        assert missing.status_code == 404
    finally:
        rig.stop()
