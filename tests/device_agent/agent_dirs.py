"""An enrolled agent directory serving a committed model, laid out as an install leaves it
(config, slot ``a``, ``current.json``): for tests that run a real agent without a server."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.config import AgentConfig
from device_agent.slots import SlotPointer, Slots
from model_bundles import keys

from .conftest import write_slot


def served_agent_dir(agent_dir: Path, model: Path, *, mqtt_url: str = "mqtt://127.0.0.1:1",
                     device_id: str = "dev-1", **config: object) -> Path:
    """Write ``agent_dir`` with a config and ``model`` committed as sample@1.0.0."""
    AgentConfig(device_id=device_id, server_url="http://fleet.invalid", mqtt_url=mqtt_url,
                mqtt_username=device_id, mqtt_password="x",
                fleet_public_key=keys.public_key_pem(Ed25519PrivateKey.generate().public_key()),
                preferred_delegates=("cpu",), **config).save(agent_dir)  # type: ignore[arg-type]
    slots = Slots(agent_dir)
    write_slot(slots.path("a"), model, name="sample", version="1.0.0")
    sha = hashlib.sha256((slots.path("a") / "manifest.json").read_bytes()).hexdigest()
    slots.switch(SlotPointer(slot="a", sha256=sha, name="sample", version="1.0.0"))
    return agent_dir
