"""Two ``fleet-server serve`` replicas (real processes) on one PostgreSQL, one data directory
and one Mosquitto over TLS, 200 simulated devices: a rollout runs while the leader replica
is killed with SIGKILL; the other takes the lease and completes it. Every telemetry report a
device sent is stored exactly once (the broker gives each report to one replica through the
shared subscription; the killed replica's unacknowledged ones come back with its session
when it is restarted under its name), and no device received two different signed
instructions under one seq."""

from __future__ import annotations

import base64
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from device_agent.simulator import SimFleet
from fleet_server.api_client import FleetClient
from fleet_server.cli import main as fleet_server_main
from tests.rollouts.sim_helpers import publish, wait_for

from .conftest import Replica, leader_of, mosquitto, wait_leader

DEVICES = 200
PLAN: dict[str, Any] = {"stages": [
    {"name": "canary 10%", "kind": "canary", "percent": 10, "deadline_s": 120,
     "gates": {"min_devices": 10, "min_samples": 0, "min_agreement": None}},
    {"name": "100%", "kind": "canary", "percent": 100, "deadline_s": 120,
     "gates": {"min_devices": 150, "min_samples": 0, "min_agreement": None}},
]}
LEASE = ("--lease-ttl", "2", "--lease-renew", "0.5", "--rollout-tick", "0.3")


@pytest.fixture()
def db_url(postgres_databases: Any) -> str:
    url: str = postgres_databases()
    return url


@pytest.fixture()
def replicas(tmp_path: Path, db_url: str) -> Iterator[list[Replica]]:
    data = tmp_path / "fleet"
    assert fleet_server_main(["db", "upgrade", "--db", db_url]) == 0
    with mosquitto(data, tmp_path / "mosquitto", ("r1", "r2")) as port:
        started: list[Replica] = []
        try:
            for name in ("r1", "r2"):  # r1 first: it makes the data directory's files
                started.append(Replica(name, data=data, db_url=db_url, broker_port=port,
                                       log_dir=tmp_path, extra=LEASE))
            yield started
        finally:
            for r in started:
                r.stop()


def _instruction_seq(envelope: bytes) -> int:
    payload = json.loads(base64.b64decode(json.loads(envelope)["payload"]))
    return int(payload["seq"])


def test_leader_killed_mid_rollout_the_other_replica_completes_it_exactly_once(
        tmp_path: Path, replicas: list[Replica], db_url: str, sample_onnx: Path) -> None:
    r1, r2 = replicas
    leader = wait_leader(replicas)
    follower = r2 if leader is r1 else r1
    assert follower.health()["leader"] is False  # type: ignore[index]
    token = (r1.data / "admin.token").read_text().strip()
    ca = r1.data / "ca" / "bundle.pem"
    # the API of either replica serves: publish through the follower
    with FleetClient(follower.url, token, ca_bundle=ca) as client:
        publish(client, tmp_path, sample_onnx, ["1.0.0"])
        fleet = SimFleet(server=follower.url, admin_token=token, count=DEVICES, group="sim",
                         report_interval_s=0.5, ca_bundle=ca).start()
        try:
            fleet.wait_connected()
            rid = client.create_rollout("sample@1.0.0", group="sim", plan=PLAN)["id"]
            wait_for(lambda: client.get_rollout(rid)["stage_index"] >= 1, 60,
                     "the rollout past its first stage")
            leader.kill()  # mid-rollout: no release, no flush
            survivor = wait_leader([follower], timeout_s=30)
            leader.start()  # back under its name: its session's unacknowledged reports
            done = wait_for(lambda: (r := client.get_rollout(rid))["state"] in (
                "completed", "halted", "aborted") and r, 90, "the rollout to finish")
            assert done["state"] == "completed", done.get("last_evaluation")
            assert wait_for(lambda: fleet.active_refs()["sample@1.0.0"] == DEVICES, 30,
                            "every device on the bundle")
            assert leader_of(replicas) is survivor  # the restarted one did not take over
            fleet.stop_reporting()
            sent = {d.device_id: sorted(d.sent_telemetry) for d in fleet.devices}
            total = sum(len(s) for s in sent.values())
            engine = sa.create_engine(sa.make_url(db_url).set(drivername="postgresql+psycopg"))
            try:
                def stored() -> dict[str, list[int]]:
                    with engine.connect() as conn:
                        rows = conn.execute(sa.text("SELECT device_id, seq FROM telemetry "
                                                    "ORDER BY device_id, seq")).all()
                    out: dict[str, list[int]] = defaultdict(list)
                    for device_id, seq in rows:
                        out[device_id].append(int(seq))
                    return out
                wait_for(lambda: sum(len(s) for s in stored().values()) >= total, 30,
                         f"{total} telemetry reports stored")
                assert total > DEVICES  # every device reported, several times
                assert dict(stored()) == {d: s for d, s in sent.items() if s}
                with engine.connect() as conn:
                    decided_by = conn.execute(sa.text(
                        "SELECT action FROM rollout_decisions WHERE rollout_id = :r "
                        "ORDER BY id"), {"r": rid}).scalars().all()
                    logged = conn.execute(sa.text(
                        "SELECT count(*) FROM instruction_log")).scalar_one()
            finally:
                engine.dispose()
            assert decided_by[0] == "created" and decided_by[-1] == "complete"
            assert logged >= DEVICES
            # no device saw two different instructions under one seq
            for device in fleet.devices:
                by_seq: dict[int, set[str]] = defaultdict(set)
                for envelope in device.received_instructions:
                    by_seq[_instruction_seq(envelope)].add(hashlib.sha256(envelope).hexdigest())
                assert all(len(v) == 1 for v in by_seq.values()), device.device_id
                assert by_seq, device.device_id
        finally:
            fleet.stop()
