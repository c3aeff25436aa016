"""The server's data directory: registry, admin token, fleet signing key, MQTT secret."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_server.errors import DataDirError
from fleet_server.tokens import ADMIN, SERVER_MQTT, new_secret
from model_bundles import keys
from model_bundles.atomic import atomic_write_bytes
from model_bundles.errors import BundleError

ADMIN_TOKEN = "admin.token"  # noqa: S105 - a file name
FLEET_KEY = "fleet.key"
FLEET_PUB = "fleet.pub"
MQTT_SECRET = "mqtt.secret"  # noqa: S105 - a file name
REGISTRY = "registry.db"
PORTS = "ports.json"
BUNDLES = "bundles"


@dataclass(frozen=True)
class DataDir:
    """Paths and secrets of an initialised data directory."""

    root: Path
    admin_token: str
    mqtt_secret: str
    fleet_key: Ed25519PrivateKey
    fleet_public_pem: str
    fleet_key_id: str
    first_start: bool

    @property
    def registry_path(self) -> Path:
        return self.root / REGISTRY

    @property
    def bundles_dir(self) -> Path:
        return self.root / BUNDLES

    @property
    def ports_path(self) -> Path:
        return self.root / PORTS

    def bundle_path(self, sha256: str) -> Path:
        return self.bundles_dir / f"{sha256}.efb"

    def write_ports(self, *, http_port: int, mqtt_port: int, http_url: str, mqtt_url: str) -> None:
        data: dict[str, Any] = {
            "http_port": http_port,
            "mqtt_port": mqtt_port,
            "http_url": http_url,
            "mqtt_url": mqtt_url,
        }
        atomic_write_bytes(self.ports_path, json.dumps(data, indent=2).encode() + b"\n")


def _secret_file(path: Path, kind: str) -> tuple[str, bool]:
    if path.exists():
        return path.read_text(encoding="utf-8").strip(), False
    value = new_secret(kind)
    atomic_write_bytes(path, value.encode() + b"\n", mode=0o600)
    return value, True


def open_data_dir(root: Path) -> DataDir:
    """Open ``root``, creating it with fresh secrets and a fleet key on first start."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        root.chmod(0o700)  # secrets, keys and the registry: the server's user only
        (root / BUNDLES).mkdir(exist_ok=True)
        token, first = _secret_file(root / ADMIN_TOKEN, ADMIN)
        mqtt_secret, _ = _secret_file(root / MQTT_SECRET, SERVER_MQTT)
        key_path, pub_path = root / FLEET_KEY, root / FLEET_PUB
        if not key_path.exists():
            pub_path.unlink(missing_ok=True)
            keys.generate_keypair(root, FLEET_KEY, FLEET_PUB)
        private = keys.load_private_key(key_path)
        public_pem = keys.public_key_pem(private.public_key())
    except (OSError, BundleError) as e:
        raise DataDirError(f"cannot initialise data directory {root}: {e}") from e
    return DataDir(
        root=root,
        admin_token=token,
        mqtt_secret=mqtt_secret,
        fleet_key=private,
        fleet_public_pem=public_pem,
        fleet_key_id=keys.key_id(private.public_key()),
        first_start=first,
    )
