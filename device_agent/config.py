"""The agent's configuration, written at enrolment to ``DIR/config.json`` (mode 0600)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from device_agent.errors import ConfigError
from device_agent.persist import atomic_write_json, read_json

__all__ = ["DEFAULT_DELEGATES", "AgentConfig", "config_path"]

DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Accelerators first so each is a candidate wherever it is present; the probe skips the
# absent ones with their reason (reported in the install record), CPU is the last resort.
DEFAULT_DELEGATES: tuple[str, ...] = (
    "tensorrt", "cuda", "openvino-npu", "openvino-gpu", "openvino", "coreml", "coreml-native",
    "qnn", "nnapi", "directml", "litert", "litert-ref", "xnnpack", "cpu",
)


def config_path(agent_dir: Path) -> Path:
    return Path(agent_dir) / "config.json"


@dataclass(frozen=True)
class AgentConfig:
    device_id: str
    server_url: str
    mqtt_url: str
    mqtt_username: str
    mqtt_password: str
    fleet_public_key: str
    fleet_key_id: str = ""
    group: str = ""
    api_host: str = "127.0.0.1"
    api_port: int = 8765
    api_max_input_bytes: int = 64 * 1024 * 1024
    """The most bytes the arrays of one local-API request may take once decoded (npz arrays
    are checked from their headers before they are read; docs/local-api.md)."""
    api_read_timeout_s: float = 10.0
    """A local-API connection that does not deliver its headers (per read) or its whole body
    within this many seconds is answered 408 and closed."""
    api_max_connections: int = 32
    """Open local-API connections at once (a thread each); one more is answered 503."""
    shadow_samples_per_minute: float = 120.0
    """The pace of shadow samples (candidate runs) this device aims for while a shadow stage
    runs; the CPU, duty-cycle and power limits still apply (docs/shadow.md)."""
    telemetry_interval_s: float = 10.0
    http_download_min_bytes: int = 64 * 1024 * 1024
    """Bundles of at least this size are fetched over HTTP(S) range requests from the
    server (``/api/v1/bundles/{id}/download``) instead of MQTT chunks."""
    preferred_delegates: tuple[str, ...] = field(default=DEFAULT_DELEGATES)

    def __post_init__(self) -> None:
        if not DEVICE_ID_RE.match(self.device_id):
            raise ConfigError(f"device_id {self.device_id!r} is not a valid device id")
        if not self.mqtt_url.startswith(("mqtt://", "tcp://", "mqtts://", "ssl://")):
            raise ConfigError(f"mqtt url {self.mqtt_url!r} must start with mqtt:// or mqtts://")
        if "BEGIN PUBLIC KEY" not in self.fleet_public_key:
            raise ConfigError("fleet_public_key is not a PEM public key")
        if not 0 <= int(self.api_port) <= 65535:
            raise ConfigError(f"api_port {self.api_port} out of range")
        if int(self.api_max_input_bytes) <= 0 or int(self.api_max_connections) <= 0:
            raise ConfigError("api_max_input_bytes and api_max_connections must be > 0")
        if not float(self.api_read_timeout_s) > 0:
            raise ConfigError("api_read_timeout_s must be > 0")
        if not float(self.shadow_samples_per_minute) > 0:
            raise ConfigError("shadow_samples_per_minute must be > 0")
        if not self.telemetry_interval_s > 0:
            raise ConfigError("telemetry_interval_s must be > 0")
        if int(self.http_download_min_bytes) < 0:
            raise ConfigError("http_download_min_bytes must be >= 0")
        object.__setattr__(self, "preferred_delegates", tuple(self.preferred_delegates))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preferred_delegates"] = list(self.preferred_delegates)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> AgentConfig:
        if not isinstance(d, dict):
            raise ConfigError("config must be a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"config is incomplete: {e}") from e

    def save(self, agent_dir: Path) -> None:
        atomic_write_json(config_path(agent_dir), self.to_dict(), mode=0o600)

    @classmethod
    def load(cls, agent_dir: Path) -> AgentConfig:
        path = config_path(agent_dir)
        try:
            raw = read_json(path)
        except FileNotFoundError as e:
            raise ConfigError(
                f"{path} not found: this directory is not enrolled (run device-agent install)"
            ) from e
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read {path}: {e}") from e
        return cls.from_dict(raw)

    @property
    def mqtt_host_port(self) -> tuple[str, int, bool]:
        """(host, port, tls) from ``mqtt_url``."""
        from urllib.parse import urlsplit

        u = urlsplit(self.mqtt_url)
        tls = u.scheme in ("mqtts", "ssl")
        if not u.hostname:
            raise ConfigError(f"mqtt url {self.mqtt_url!r} has no host")
        return u.hostname, u.port or (8883 if tls else 1883), tls
