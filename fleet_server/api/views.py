"""Registry rows -> JSON shapes returned by the API (one place, so routes stay thin)."""

from __future__ import annotations

from typing import Any

from fleet_server.registry import Row


def bundle_summary(row: Row) -> dict[str, Any]:
    return {"id": row["id"], "ref": row["ref"], "name": row["name"], "version": row["version"],
            "size": row["size"], "publisher_key_id": row["publisher_key_id"],
            "uploaded_at": row["uploaded_at"]}


def bundle_detail(row: Row) -> dict[str, Any]:
    return {**bundle_summary(row), "manifest": row["manifest"], "chunk_size": row["chunk_size"],
            "chunk_count": len(row["chunk_hashes"])}


def publisher(row: Row) -> dict[str, Any]:
    return {"key_id": row["key_id"], "name": row["name"], "public_key": row["pem"],
            "added_at": row["added_at"]}


def device(row: Row) -> dict[str, Any]:
    return {"id": row["id"], "group": row["group_name"], "enrolled_at": row["enrolled_at"],
            "online": bool(row["online"]), "last_seen": row["last_seen"],
            "active_bundle": row["active_bundle"], "delegate": row["delegate"],
            "state": row["state"], "telemetry": row["telemetry_summary"],
            "last_issued_seq": row["last_issued_seq"], "desired_bundle": row["desired_sha"],
            "desired_deployment": row["desired_deployment"]}


def deployment(row: Row) -> dict[str, Any]:
    return {"id": row["id"], "bundle": row["bundle_ref"], "bundle_id": row["bundle_id"],
            "target": {"kind": row["target_kind"], "value": row["target_value"]},
            "created_at": row["created_at"], "created_by": row["created_by"],
            "targets": [{"device_id": t["device_id"], "instruction_seq": t["instruction_seq"],
                         "state": t["state"], "error": t["error"],
                         "updated_at": t["updated_at"]} for t in row["targets"]]}
