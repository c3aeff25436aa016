"""The HTTP range path with real processes: a device configured to fetch large bundles over
HTTP downloads them with Range requests authenticated as itself, resumes from its part file
after a SIGKILL mid-download, installs the bundle, and never asks for a chunk over MQTT."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from device_agent.config import AgentConfig
from tests.e2e.harness import wait_for

from .crash_helpers import CrashRig
from .mqtt_tools import ChunkRequestLog, Mosquitto
from .test_transfer_resume import only_bundle, written_chunks

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]




def test_large_bundle_comes_over_http_ranges_and_resumes_after_a_kill(
        tmp_path: Path, broker: Mosquitto) -> None:
    observer = ChunkRequestLog(broker.port)
    rig = CrashRig(tmp_path, versions=1, broker=broker.url)
    try:
        sha256, total = only_bundle(rig)
        cfg = AgentConfig.load(rig.dir)
        raw = json.loads((rig.dir / "config.json").read_text())
        raw["http_download_min_bytes"] = 1  # every bundle is "large"
        (rig.dir / "config.json").write_text(json.dumps(raw))
        url = f"{rig.fleet.url}/api/v1/bundles/{sha256}/download"
        device_auth = (cfg.device_id, cfg.mqtt_password)

        # only the bundle of its current instruction, only with its own secret
        assert httpx.get(url, auth=device_auth, timeout=5).status_code == 404
        assert httpx.get(url, auth=(cfg.device_id, "wrong"), timeout=5).status_code == 401
        rig.deploy("1.0.0")
        part = httpx.get(url, auth=device_auth, headers={"Range": "bytes=0-99"}, timeout=5)
        assert part.status_code == 206 and len(part.content) == 100

        agent = rig.start({"EDGEFLEET_TEST_KILL_AT": "chunk:2"})
        wait_for(lambda: not agent.alive(), 60, "agent to die at chunk 2", ())
        assert agent.proc.returncode == -9, agent.output()
        assert written_chunks(rig, sha256) == {0, 1, 2}
        assert rig.check_disk() is None

        assert rig.restart_until_converged() == 1
        assert rig.converged() == {"served": "wide@1.0.0", "state": "committed"}
        assert rig.check_disk() == "wide@1.0.0"
        assert not list((rig.dir / "downloads").glob("*"))
        time.sleep(0.2)
        assert observer.indexes(sha256) == []  # no chunk went over MQTT
        assert total > 3
    finally:
        rig.stop()
        observer.close()
