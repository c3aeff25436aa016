"""Stopping an HTTP range download in the middle, with real processes: the fetch runs on the
agent's worker and yields between chunks when an instruction waits, so an operator cancel
or a superseding deployment takes effect after the chunk in flight, not after the whole
(slowed) download and install."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from device_agent.slots import Slots
from device_agent.state_store import StateStore
from ota.chunks import file_sha256
from tests.e2e.harness import wait_for

from . import crash_helpers
from .crash_helpers import CrashRig
from .test_transfer_resume import written_chunks

pytestmark = pytest.mark.e2e

SLOW = {"EDGEFLEET_TEST_CHUNK_DELAY_S": "0.2"}  # ~20 chunks: about 4 s per download


def http_rig(root: Path, monkeypatch: pytest.MonkeyPatch) -> CrashRig:
    monkeypatch.setattr(crash_helpers, "WIDTH", 80_000)  # ~5 MB, about 20 chunks
    rig = CrashRig(root, versions=2)
    raw = json.loads((rig.dir / "config.json").read_text())
    raw["http_download_min_bytes"] = 1  # every bundle comes over HTTP ranges
    (rig.dir / "config.json").write_text(json.dumps(raw))
    return rig


def sha_of(rig: CrashRig, version: str) -> str:
    return file_sha256(rig.root / f"wide-{version}.efb")


def history(rig: CrashRig) -> list[dict]:
    r = httpx.get(f"{rig.fleet.url}/api/v1/devices/{rig.device_id}/events",
                  headers=rig.headers, params={"limit": 500}, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def refused_requests(rig: CrashRig) -> list[str]:
    """Range requests the server refused (404: the bundle is no longer in the device's
    instruction). The server switches before the instruction reaches the device, so the
    chunk in flight may be refused; a device that stops between chunks asks for no more."""
    return [e["detail"] for e in history(rig)
            if e["kind"] == "error" and "http download" in (e.get("detail") or "")]


def test_operator_cancel_stops_an_http_range_download_between_chunks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = http_rig(tmp_path, monkeypatch)
    try:
        sha1 = sha_of(rig, "1.0.0")
        rig.deploy("1.0.0")
        agent = rig.start(SLOW)
        wait_for(lambda: len(written_chunks(rig, sha1)) >= 2, 60, "the download to start",
                 (rig.fleet.server, agent))
        rig.fleet.cli("fleet-server", "cancel", "dep-1", "--json")

        wait_for(lambda: crash_helpers.cancelled_and_applied(rig.dir, 2), 30,
                 "the agent to drop the download and apply instruction 2",
                 (rig.fleet.server, agent))
        j = StateStore(rig.dir).load_journal()
        assert (j.error, StateStore(rig.dir).applied_seq) == ("cancelled by instruction 2", 2)
        wait_for(lambda: not list((rig.dir / "downloads").glob("*")), 10, "part file deleted",
                 (agent,))
        assert Slots(rig.dir).current() is None  # nothing was installed
        assert not (rig.dir / "slots" / "a").exists() and not (rig.dir / "slots" / "b").exists()
        assert agent.alive()
        assert len(refused_requests(rig)) <= 1
    finally:
        rig.stop()


def test_superseding_deployment_stops_an_http_download_and_installs_the_new_bundle(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = http_rig(tmp_path, monkeypatch)
    try:
        sha1, sha2 = sha_of(rig, "1.0.0"), sha_of(rig, "2.0.0")
        rig.deploy("1.0.0")
        agent = rig.start(SLOW)
        wait_for(lambda: len(written_chunks(rig, sha1)) >= 2, 60, "the first download",
                 (rig.fleet.server, agent))
        rig.deploy("2.0.0")
        wait_for(lambda: written_chunks(rig, sha2), 30, "the second download to start",
                 (rig.fleet.server, agent))
        # the first download stopped where it was: its part file is gone, never finished
        assert not (rig.dir / "downloads" / f"{sha1}.part").exists()

        wait_for(rig.converged, 60, "the new bundle installed", (rig.fleet.server, agent))
        assert rig.converged() == {"served": "wide@2.0.0", "state": "committed"}
        assert rig.check_disk() == "wide@2.0.0"
        assert Slots(rig.dir).current().sha256 == sha2
        assert not list((rig.dir / "downloads").glob("*"))
        failed = [e["detail"] for e in history(rig) if e.get("state") == "failed"]
        assert failed == ["superseded by instruction 2"]
        assert len(refused_requests(rig)) <= 1
    finally:
        rig.stop()
