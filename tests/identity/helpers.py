"""Shared steps for the identity tests: a console login, a page's CSRF token, a device."""

from __future__ import annotations

import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from model_bundles import keys
from tests.fleet_server.bundle_helpers import make_bundle

from .conftest import Rig


def pem_of(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def add_user(rig: Rig, username: str, role: str, password: str) -> None:
    r = rig.client.post("/api/v1/users", headers=rig.auth("bootstrap"),
                        json={"username": username, "password": password, "role": role})
    assert r.status_code == 201, r.text


def console_login(client: TestClient, username: str, password: str) -> str:
    """Log in through the form; returns the session's CSRF token (from a console page)."""
    r = client.post("/console/login", data={"username": username, "password": password},
                    follow_redirects=False)
    assert r.status_code == 303, r.text
    return csrf_of(client.get("/console/bundles").text)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


def enrol_device(rig: Rig, device_id: str, group: str = "lab") -> None:
    token = rig.client.post("/api/v1/enrolment-tokens", json={"group": group},
                            headers=rig.auth("bootstrap")).json()["token"]
    r = rig.client.post("/api/v1/enrol", json={
        "token": token, "device_id": device_id,
        "public_key": pem_of(Ed25519PrivateKey.generate())})
    assert r.status_code == 201, r.text


def signed_bundle(tmp: Path, model: Path, version: str = "1.0.0") -> tuple[Path, str]:
    """A bundle signed by a fresh publisher key; returns (bundle, publisher PEM)."""
    key = Ed25519PrivateKey.generate()
    assert keys.key_id(key.public_key())
    return make_bundle(tmp / f"sample-{version}.efb", model, key, version=version), pem_of(key)
