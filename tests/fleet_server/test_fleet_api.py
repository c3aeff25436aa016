"""REST API over the real app (lifespan runs the embedded broker and bridge)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from model_bundles import keys
from ota.instructions import verify_instruction

from .bundle_helpers import make_bundle

ADMIN_ROUTES = [
    ("GET", "/api/v1/bundles"), ("POST", "/api/v1/bundles"), ("GET", "/api/v1/bundles/x"),
    ("GET", "/api/v1/bundles/x/download"), ("GET", "/api/v1/publishers"),
    ("POST", "/api/v1/publishers"), ("POST", "/api/v1/enrolment-tokens"),
    ("GET", "/api/v1/devices"), ("GET", "/api/v1/devices/d"),
    ("GET", "/api/v1/devices/d/telemetry"), ("GET", "/api/v1/devices/d/events"),
    ("GET", "/api/v1/deployments"), ("POST", "/api/v1/deployments"),
    ("GET", "/api/v1/deployments/dep-1"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_admin_routes_require_the_admin_token(api: TestClient, method: str, path: str) -> None:
    assert api.request(method, path, headers={"Authorization": ""}).status_code == 401
    wrong = api.request(method, path, headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401
    assert wrong.json()["detail"]


def test_health_and_openapi_are_public(api: TestClient) -> None:
    assert api.get("/api/v1/health", headers={"Authorization": ""}).json()["status"] == "ok"
    assert "/api/v1/enrol" in api.get("/openapi.json").json()["paths"]


@pytest.fixture()
def publisher(api: TestClient) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    r = api.post("/api/v1/publishers", json={"public_key": keys.public_key_pem(key),
                                             "name": "ml-team"})
    assert r.status_code == 201
    assert r.json()["key_id"] == keys.key_id(key.public_key())
    return key


def _upload(api: TestClient, path: Path) -> tuple[int, dict]:
    r = api.post("/api/v1/bundles", content=path.read_bytes(),
                 headers={"Content-Type": "application/octet-stream"})
    return r.status_code, r.json()


def test_upload_from_registered_publisher_is_stored(api: TestClient, tmp_path: Path,
                                                    sample_onnx: Path,
                                                    publisher: Ed25519PrivateKey) -> None:
    bundle = make_bundle(tmp_path / "s.efb", sample_onnx, publisher)
    status, body = _upload(api, bundle)
    assert status == 201
    assert (body["ref"], body["size"]) == ("sample@1.0.0", bundle.stat().st_size)
    assert body["publisher_key_id"] == keys.key_id(publisher.public_key())
    stored = api.app.state.services.data_dir.bundle_path(body["id"])  # type: ignore[attr-defined]
    assert stored.read_bytes() == bundle.read_bytes()
    assert api.get("/api/v1/bundles/sample@1.0.0").json()["manifest"]["name"] == "sample"
    ranged = api.get(f"/api/v1/bundles/{body['id']}/download", headers={"Range": "bytes=0-9"})
    assert ranged.status_code == 206 and ranged.content == bundle.read_bytes()[:10]
    again, _ = _upload(api, bundle)
    assert again == 200


def test_upload_signed_by_unknown_key_is_rejected_and_nothing_kept(
        api: TestClient, tmp_path: Path, sample_onnx: Path) -> None:
    bundle = make_bundle(tmp_path / "s.efb", sample_onnx, Ed25519PrivateKey.generate())
    status, body = _upload(api, bundle)
    assert status == 422
    assert "\n" not in body["detail"] and body["detail"]
    assert api.get("/api/v1/bundles").json() == []
    store = api.app.state.services.data_dir.bundles_dir  # type: ignore[attr-defined]
    assert list(store.iterdir()) == []


def test_upload_of_garbage_is_rejected(api: TestClient, publisher: Ed25519PrivateKey) -> None:
    r = api.post("/api/v1/bundles", content=b"not a tar at all" * 100)
    assert r.status_code == 422
    assert api.get("/api/v1/bundles").json() == []


def test_same_ref_with_other_bytes_is_a_conflict(api: TestClient, tmp_path: Path,
                                                 sample_onnx: Path,
                                                 publisher: Ed25519PrivateKey) -> None:
    first = make_bundle(tmp_path / "a.efb", sample_onnx, publisher)
    second = make_bundle(tmp_path / "b.efb", sample_onnx, publisher, extra=b"changed")
    assert _upload(api, first)[0] == 201
    status, body = _upload(api, second)
    assert status == 409 and "sample@1.0.0" in body["detail"]
    assert [b["id"] for b in api.get("/api/v1/bundles").json()] == [
        _upload(api, first)[1]["id"]]


def _enrol(api: TestClient, device_id: str, group: str = "default") -> dict:
    token = api.post("/api/v1/enrolment-tokens", json={"group": group}).json()["token"]
    pem = keys.public_key_pem(Ed25519PrivateKey.generate())
    r = api.post("/api/v1/enrol", json={"token": token, "device_id": device_id,
                                        "public_key": pem}, headers={"Authorization": ""})
    assert r.status_code == 201, r.text
    return r.json()


def test_enrolment_token_works_once(api: TestClient) -> None:
    token = api.post("/api/v1/enrolment-tokens", json={"group": "lab"}).json()["token"]
    pem = keys.public_key_pem(Ed25519PrivateKey.generate())
    first = api.post("/api/v1/enrol", json={"token": token, "device_id": "dev-1",
                                            "public_key": pem}, headers={"Authorization": ""})
    assert first.status_code == 201
    body = first.json()
    assert body["group"] == "lab" and body["mqtt"]["username"] == "dev-1"
    assert body["mqtt"]["url"].startswith("mqtt://127.0.0.1:")
    assert body["fleet_key_id"] == keys.key_id(keys.load_public_key(body["fleet_public_key"]))
    second = api.post("/api/v1/enrol", json={"token": token, "device_id": "dev-2",
                                             "public_key": pem}, headers={"Authorization": ""})
    assert second.status_code == 403
    assert [d["id"] for d in api.get("/api/v1/devices").json()] == ["dev-1"]


def test_reenrolling_an_existing_device_is_a_conflict(api: TestClient) -> None:
    _enrol(api, "dev-1")
    token = api.post("/api/v1/enrolment-tokens", json={}).json()["token"]
    pem = keys.public_key_pem(Ed25519PrivateKey.generate())
    r = api.post("/api/v1/enrol", json={"token": token, "device_id": "dev-1",
                                        "public_key": pem})
    assert r.status_code == 409


def test_deploy_of_unknown_bundle_is_not_found(api: TestClient) -> None:
    _enrol(api, "dev-1")
    r = api.post("/api/v1/deployments", json={"bundle": "nope@1.0.0", "device_id": "dev-1"})
    assert r.status_code == 404
    assert api.get("/api/v1/deployments").json() == []


def test_deploy_needs_exactly_one_target(api: TestClient) -> None:
    r = api.post("/api/v1/deployments", json={"bundle": "x@1.0.0"})
    assert r.status_code == 422


def test_deploy_to_group_signs_one_instruction_per_device(
        api: TestClient, tmp_path: Path, sample_onnx: Path,
        publisher: Ed25519PrivateKey) -> None:
    fleet_pem = _enrol(api, "dev-1", "lab")["fleet_public_key"]
    _enrol(api, "dev-2", "lab")
    _enrol(api, "dev-3", "other")
    _, bundle = _upload(api, make_bundle(tmp_path / "s.efb", sample_onnx, publisher))
    r = api.post("/api/v1/deployments", json={"bundle": "sample@1.0.0", "group": "lab"})
    assert r.status_code == 201
    dep = r.json()
    assert [t["device_id"] for t in dep["targets"]] == ["dev-1", "dev-2"]
    assert {t["state"] for t in dep["targets"]} == {"issued"}
    services = api.app.state.services  # type: ignore[attr-defined]
    envelopes = dict(services.registry.desired_envelopes())
    assert set(envelopes) == {"dev-1", "dev-2"}
    instr = verify_instruction(envelopes["dev-1"], keys.load_public_key(fleet_pem),
                               device_id="dev-1", last_seq=0, now=dep["created_at"])
    assert instr.bundle is not None and instr.bundle.sha256 == bundle["id"]
    assert instr.deployment_id == dep["id"]
    again = api.post("/api/v1/deployments", json={"bundle": bundle["id"], "device_id": "dev-1"})
    assert again.json()["targets"][0]["instruction_seq"] == 2
    assert api.get(f"/api/v1/deployments/{dep['id']}").json()["bundle"] == "sample@1.0.0"
