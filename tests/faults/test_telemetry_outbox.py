"""The telemetry outbox with real processes: the broker (Mosquitto) is down for a while
during which the agent keeps serving predictions and producing telemetry and events; after
the broker is back every record reaches the server exactly once (sequence numbers 1..N with
no gap and no duplicate) and the on-disk outbox is empty again."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.harness import Fleet, wait_for

from .mqtt_tools import Mosquitto

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

DEVICE = "outbox-1"




def device_seq(agent_dir: Path) -> int:
    """The last message seq the device issued (persisted by its StateStore)."""
    return int(json.loads((agent_dir / "state" / "message_seq.json").read_text())["seq"])


def test_every_record_made_while_the_broker_was_down_arrives_once_after_it_returns(
        tmp_path: Path, broker: Mosquitto, digits_onnx: Path,
        digits_samples: np.ndarray) -> None:
    fleet = Fleet(tmp_path, broker.url)
    try:
        bundle, pub = fleet.build_bundle(digits_onnx, "digits", "1.0.0")
        fleet.cli("fleet-server", "publishers", "add", str(pub))
        fleet.cli("model-bundle", "publish", str(bundle))
        agent, agent_dir, api = fleet.start_agent(DEVICE)  # telemetry every second
        fleet.cli("fleet-server", "deploy", "digits@1.0.0", "--device", DEVICE)
        fleet.wait_active(DEVICE, "digits@1.0.0")
        url = f"http://127.0.0.1:{api['port']}/v1/predict"
        x = {"inputs": {"X": digits_samples[:1].tolist()}}

        def predict() -> None:
            assert httpx.post(url, json=x, timeout=10).status_code == 200

        predictions = 0
        for _ in range(3):
            predict()
            predictions += 1
        seq_before_outage = device_seq(agent_dir)

        broker.stop()
        outage_ends = time.monotonic() + 4.0
        while time.monotonic() < outage_ends:  # the device serves on, telemetry piles up
            predict()
            predictions += 1
            time.sleep(0.05)
        queued = sorted((agent_dir / "outbox").glob("*.msg"))
        assert len(queued) >= 2, "telemetry made during the outage waits on disk"
        assert device_seq(agent_dir) >= seq_before_outage + 2
        broker.start()

        headers = {"Authorization": f"Bearer {fleet.token}"}

        def server_records(kind: str) -> list[dict]:
            r = httpx.get(f"{fleet.url}/api/v1/devices/{DEVICE}/{kind}?limit=1000",
                          headers=headers, timeout=5)
            r.raise_for_status()
            return list(r.json())

        def all_delivered() -> tuple[list[dict], list[dict]] | None:
            issued = device_seq(agent_dir)
            tel, ev = server_records("telemetry"), server_records("events")
            seqs = sorted(r["seq"] for r in tel + ev)
            if list((agent_dir / "outbox").glob("*.msg")) or issued != device_seq(agent_dir):
                return None
            if not tel or tel[0]["total_inferences"] != predictions:
                return None
            if seqs != list(range(1, issued + 1)):
                raise AssertionError(f"seqs {seqs} at the server, {issued} issued")
            return tel, ev

        tel, ev = wait_for(all_delivered, 60, "every record at the server", fleet.procs())
        seqs = [r["seq"] for r in tel + ev]
        assert len(seqs) == len(set(seqs))  # once each: no duplicate across kinds either
        assert sum(r["inferences"] for r in tel) == predictions  # no window lost or doubled
        assert json.loads((agent_dir / "outbox" / "dropped").read_text()
                          if (agent_dir / "outbox" / "dropped").exists() else "0") == 0
        assert broker.starts == 2
    finally:
        fleet.stop()
