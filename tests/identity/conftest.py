"""Fixtures for identity tests: a real app (real SQLite, embedded broker) with one API token
per role, minted through the REST API by the bootstrap admin token."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fleet_server.app import create_app
from fleet_server.config import ServerSettings
from fleet_server.roles import ROLE_NAMES

PASSWORD = "correct horse battery staple"


@dataclass
class Rig:
    app: FastAPI
    client: TestClient  # no credentials by default
    bootstrap: str
    tokens: dict[str, str]  # role -> API token

    def auth(self, who: str) -> dict[str, str]:
        """Headers for ``who``: a role name, ``bootstrap`` or ``anonymous``."""
        if who == "anonymous":
            return {}
        token = self.bootstrap if who == "bootstrap" else self.tokens[who]
        return {"Authorization": f"Bearer {token}"}

    def audit(self, **params: object) -> list[dict[str, object]]:
        r = self.client.get("/api/v1/audit", params=params, headers=self.auth("bootstrap"))
        assert r.status_code == 200, r.text
        return r.json()


def make_rig(settings: ServerSettings) -> Iterator[Rig]:
    app = create_app(settings)
    with TestClient(app) as client:
        bootstrap = app.state.services.data_dir.admin_token
        tokens = {}
        for role in ROLE_NAMES:
            r = client.post("/api/v1/tokens", json={"name": f"{role}-token", "role": role},
                            headers={"Authorization": f"Bearer {bootstrap}"})
            assert r.status_code == 201, r.text
            tokens[role] = r.json()["token"]
        yield Rig(app=app, client=client, bootstrap=bootstrap, tokens=tokens)


@pytest.fixture()
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield from make_rig(ServerSettings(data_dir=tmp_path / "fleet", port=0, mqtt_port=0,
                                       login_max_per_address=1000, login_max_per_user=1000))
