"""Registry functions on a real SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_server.errors import ConflictError, NotFoundError
from fleet_server.registry import Registry, hash_secret


@pytest.fixture()
def registry(tmp_path: Path) -> Registry:
    reg = Registry(tmp_path / "registry.db")
    reg.add_device(device_id="dev-1", group="lab", public_key="pem",
                   mqtt_secret_hash=hash_secret("s"))
    return reg


def test_telemetry_is_stored_once_per_device_and_seq(registry: Registry) -> None:
    report = {"seq": 5, "inferences": 3}
    assert registry.add_telemetry(device_id="dev-1", seq=5, ts=1.0, data=report) is True
    assert registry.add_telemetry(device_id="dev-1", seq=5, ts=1.0, data=report) is False
    rows = registry.list_telemetry(device_id="dev-1")
    assert [r["seq"] for r in rows] == [5]
    assert registry.get_device(device_id="dev-1")["telemetry_summary"] == report


def test_telemetry_from_unknown_device_is_not_stored(registry: Registry) -> None:
    assert registry.add_telemetry(device_id="ghost", seq=1, ts=1.0, data={}) is False
    assert registry.list_telemetry(device_id="ghost") == []


def test_enrolment_token_is_one_time_and_expires(registry: Registry) -> None:
    registry.add_enrolment_token(token="tok-aaaaaaaa", group="lab", expires_at=100.0)
    assert registry.consume_enrolment_token(token="tok-aaaaaaaa", now=50.0) == "lab"
    assert registry.consume_enrolment_token(token="tok-aaaaaaaa", now=50.0) is None
    registry.add_enrolment_token(token="tok-bbbbbbbb", group="lab", expires_at=100.0)
    assert registry.consume_enrolment_token(token="tok-bbbbbbbb", now=100.0) is None


def test_enrolment_tokens_are_stored_only_as_hashes(registry: Registry, tmp_path: Path) -> None:
    registry.add_enrolment_token(token="plain-secret-token", group="lab", expires_at=1e12)
    registry.close()
    assert b"plain-secret-token" not in (tmp_path / "registry.db").read_bytes()


def test_same_ref_with_other_bytes_conflicts_and_leaves_first(registry: Registry) -> None:
    common = dict(name="digits", version="1.0.0", size=10, publisher_key_id="k",
                  manifest={"name": "digits"}, chunk_size=4, chunk_hashes=["h"])
    row, created = registry.add_bundle(sha256="a" * 64, **common)
    assert created and row["ref"] == "digits@1.0.0"
    again, created_again = registry.add_bundle(sha256="a" * 64, **common)
    assert not created_again and again["id"] == "a" * 64
    with pytest.raises(ConflictError):
        registry.add_bundle(sha256="b" * 64, **common)
    assert [b["id"] for b in registry.list_bundles()] == ["a" * 64]
    assert registry.find_bundle(key="digits@1.0.0")["chunk_hashes"] == ["h"]


def test_reenrolling_a_device_conflicts(registry: Registry) -> None:
    with pytest.raises(ConflictError):
        registry.add_device(device_id="dev-1", group="x", public_key="p", mqtt_secret_hash="h")
    assert registry.get_device(device_id="dev-1")["group_name"] == "lab"


def test_instruction_seq_increases_and_target_state_follows_reports(registry: Registry) -> None:
    assert registry.issue_seq(device_id="dev-1", sha256="a" * 64, deployment_id="dep-1") == 1
    assert registry.issue_seq(device_id="dev-1", sha256="a" * 64, deployment_id="dep-1") == 2
    registry.add_deployment(deployment_id="dep-1", bundle_ref="d@1.0.0", bundle_id="a" * 64,
                            target_kind="device", target_value="dev-1", created_by="admin")
    registry.add_deployment_target(deployment_id="dep-1", device_id="dev-1", instruction_seq=2)
    assert registry.update_target_state(device_id="dev-1", instruction_seq=2,
                                        state="committed", error=None)
    target = registry.get_deployment(deployment_id="dep-1")["targets"][0]
    assert (target["state"], target["instruction_seq"]) == ("committed", 2)
    assert registry.get_device(device_id="dev-1")["desired_sha"] == "a" * 64


def test_unknown_lookups_raise_not_found(registry: Registry) -> None:
    with pytest.raises(NotFoundError):
        registry.find_bundle(key="nope@1.0.0")
    with pytest.raises(NotFoundError):
        registry.get_deployment(deployment_id="dep-9")
    with pytest.raises(NotFoundError):
        registry.get_device(device_id="ghost")
