"""What a replica is told and what the broker lets it do, without running two of them:
the embedded broker cannot host replicas (and says so), Mosquitto's ACL and password file
name every replica, a replica id is checked, and the bridge's client id is per replica."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from fleet_server.config import ServerSettings, SettingsError
from fleet_server.mosquitto_config import MosquittoFiles, acl_text
from fleet_server.mqtt_bridge import bridge_client_id
from fleet_server.serve import start_server
from fleet_server.services import EMBEDDED_REPLICA_WARNING
from ota.topics import DEVICES, SERVER_SUBSCRIPTIONS


def test_a_replica_id_on_the_embedded_broker_runs_a_single_server_and_says_so(
        tmp_path: Path) -> None:
    settings = ServerSettings(data_dir=tmp_path / "fleet", port=0, mqtt_port=0,
                              insecure=True, replica_id="r1")
    with start_server(settings) as server:
        health = httpx.get(f"{server.http_url}/api/v1/health", timeout=10).json()
        assert health["replica_warning"] == EMBEDDED_REPLICA_WARNING
        assert (health["replica_id"], health["leader"]) == ("r1", True)
        bridge = server.services.bridge
        assert bridge is not None and bridge.subscriptions() == list(SERVER_SUBSCRIPTIONS)


def test_mosquitto_lets_each_named_replica_subscribe_through_the_shared_group(
        tmp_path: Path) -> None:
    acl = acl_text(replicas=("r1", "r2"))
    for user in ("edgefleet-server", "edgefleet-server.r1", "edgefleet-server.r2"):
        block = acl.split(f"user {user}\n", 1)[1].split("\n\n", 1)[0]
        assert block.splitlines() == [f"topic readwrite {DEVICES}/#",
                                      f"topic read $share/edgefleet/{DEVICES}/#"]
    files = MosquittoFiles(tmp_path / "mosq")
    files.write(port=1883, server_password="s3cret", replicas=("r1",))
    assert files.usernames() == ["edgefleet-server", "edgefleet-server.r1"]


@pytest.mark.parametrize("bad", ["R1", "-r1", "r_1", "r1.x", "", "x" * 33])
def test_a_malformed_replica_id_is_refused_naming_the_rule(tmp_path: Path, bad: str) -> None:
    with pytest.raises(SettingsError, match=r"replica id must match \[a-z0-9\]"):
        ServerSettings(data_dir=tmp_path, replica_id=bad)


def test_a_lease_renewed_no_more_often_than_it_lasts_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="renew interval must be positive and shorter"):
        ServerSettings(data_dir=tmp_path, lease_ttl_s=2, lease_renew_s=2)


def test_each_replica_has_its_own_bridge_client_id() -> None:
    ids = {bridge_client_id("secret"), bridge_client_id("secret", "r1"),
           bridge_client_id("secret", "r2")}
    assert len(ids) == 3 and all(i.startswith("edgefleet-server-") for i in ids)
