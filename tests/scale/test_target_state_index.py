"""An install state a device reports finds its deployment target through an index
(migration 0004), not a scan of every target: at 10,000 devices each report scanned 10,000
rows and more with every rollout stage (docs/scaling.md, "10,000 devices")."""

from __future__ import annotations

from pathlib import Path

from fleet_server import registry as registry_module
from fleet_server.db import open_database
from fleet_server.registry import Registry

INDEX = "idx_deployment_targets_device_id_instruction_seq"


def test_install_state_is_matched_to_its_target_by_index_not_by_a_scan(
        tmp_path: Path) -> None:
    db = open_database(tmp_path / "registry.db")
    lookups = [
        ("SELECT count(*) FROM deployment_targets WHERE device_id = ? AND instruction_seq = ?",
         ["dev-1", 7]),
        (registry_module._TARGET_STATE_UPDATE,
         ["committed", None, 1.0, "dev-1", 7, "committed", None, "committed"]),
    ]
    for sql, params in lookups:
        plan = " ".join(str(r[-1]) for r in db.tuples("EXPLAIN QUERY PLAN " + sql, params))
        assert INDEX in plan and "SCAN deployment_targets" not in plan, plan
    # and the statements still do their work through it
    reg = Registry(db)
    reg.add_device(device_id="dev-1", group="g", public_key="", mqtt_secret_hash="x")
    reg.add_deployment(deployment_id="dep-1", bundle_ref="b@1", bundle_id="b" * 64,
                       target_kind="device", target_value="dev-1", created_by="t")
    reg.add_deployment_target(deployment_id="dep-1", device_id="dev-1", instruction_seq=7)
    assert reg.update_target_state(device_id="dev-1", instruction_seq=7, state="committed",
                                   error=None)
    assert not reg.update_target_state(device_id="dev-1", instruction_seq=8,
                                       state="committed", error=None)
    [target] = reg.get_deployment(deployment_id="dep-1")["targets"]
    assert target["state"] == "committed"
    reg.close()
