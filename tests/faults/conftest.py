"""Fault-test fixtures: a Mosquitto of the test's own, so the test can stop and restart it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .mqtt_tools import Mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    m = Mosquitto(tmp_path / "mosquitto")
    m.start()
    yield m
    m.stop()
