"""Operator delegate overrides: the REST deployment carries them in the signed instruction,
the agent persists them across restarts, and a bad override is refused at the API."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from device_agent.override_store import load_override, override_path, save_override
from device_agent.variant_selection import Override
from model_bundles import keys
from ota.instructions import DelegateOverride, verify_instruction
from tests.fleet_server.bundle_helpers import make_bundle
from tests.fleet_server.conftest import api, settings  # noqa: F401  (fixtures)
from tests.fleet_server.test_fleet_api import _enrol, _upload, publisher  # noqa: F401


def test_deployment_override_is_signed_into_each_devices_instruction(
        api: TestClient, tmp_path: Path, sample_onnx: Path,  # noqa: F811
        publisher: Ed25519PrivateKey) -> None:  # noqa: F811
    fleet_pem = _enrol(api, "dev-1", "lab")["fleet_public_key"]
    _upload(api, make_bundle(tmp_path / "s.efb", sample_onnx, publisher))
    r = api.post("/api/v1/deployments", json={
        "bundle": "sample@1.0.0", "group": "lab",
        "delegate_override": {"delegate": "cuda", "variant": "onnx-fp32"}})
    assert r.status_code == 201, r.text
    envelopes = dict(api.app.state.services.registry.desired_envelopes())  # type: ignore[attr-defined]
    instr = verify_instruction(envelopes["dev-1"], keys.load_public_key(fleet_pem),
                               device_id="dev-1", last_seq=0, now=r.json()["created_at"])
    assert instr.delegate_override == DelegateOverride(variant="onnx-fp32", delegate="cuda")


def test_malformed_override_is_a_422_and_deploys_nothing(
        api: TestClient, tmp_path: Path, sample_onnx: Path,  # noqa: F811
        publisher: Ed25519PrivateKey) -> None:  # noqa: F811
    _enrol(api, "dev-1", "lab")
    _upload(api, make_bundle(tmp_path / "s.efb", sample_onnx, publisher))
    r = api.post("/api/v1/deployments", json={
        "bundle": "sample@1.0.0", "group": "lab", "delegate_override": {"delegate": "../x"}})
    assert r.status_code == 422
    assert api.get("/api/v1/deployments").json() == []


def test_agent_override_persists_and_reports_change(tmp_path: Path) -> None:
    assert load_override(tmp_path) is None
    assert save_override(tmp_path, DelegateOverride(delegate="litert")) is True
    assert save_override(tmp_path, DelegateOverride(delegate="litert")) is False
    assert load_override(tmp_path) == Override(delegate="litert")  # what a restart reads
    assert save_override(tmp_path, None) is True  # a deployment without override clears it
    assert load_override(tmp_path) is None and override_path(tmp_path).exists()
