"""Fixtures for the fleet server tests: a real server on free ports, real SQLite, real broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleet_server.app import create_app
from fleet_server.config import ServerSettings
from fleet_server.serve import RunningServer, start_server


@pytest.fixture()
def settings(tmp_path: Path) -> ServerSettings:
    return ServerSettings(data_dir=tmp_path / "fleet", port=0, mqtt_port=0, insecure=True)


@pytest.fixture()
def api(settings: ServerSettings) -> Iterator[TestClient]:
    """A TestClient over the app (lifespan runs: embedded broker and bridge are up)."""
    app = create_app(settings)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {app.state.services.data_dir.admin_token}"
        yield client


@pytest.fixture()
def server(settings: ServerSettings) -> Iterator[RunningServer]:
    with start_server(settings) as running:
        yield running
