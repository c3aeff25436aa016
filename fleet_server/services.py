"""Everything one running server holds: data dir, registry, broker, bridge, deployer."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field

from fleet_server.broker import EmbeddedBroker
from fleet_server.broker_auth import BrokerAuthority
from fleet_server.bundle_store import BundleStore
from fleet_server.config import ServerSettings
from fleet_server.datadir import DataDir, open_data_dir
from fleet_server.deployments import Deployer
from fleet_server.metrics import ServerMetrics
from fleet_server.mqtt_bridge import MqttBridge
from fleet_server.registry import Registry
from fleet_server.rollout_store import RolloutStore
from fleet_server.rollouts.driver import RolloutDriver
from fleet_server.tuf_repo import TufRepo, open_tuf_repo

log = logging.getLogger(__name__)


@dataclass
class ConsoleSessions:
    """Console login sessions (in memory; a restart logs everyone out)."""

    ttl_s: int
    _sessions: dict[str, tuple[float, str]] = field(default_factory=dict)

    def create(self) -> tuple[str, str]:
        session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        self._sessions[session_id] = (time.time() + self.ttl_s, csrf)
        return session_id, csrf

    def csrf_for(self, session_id: str | None) -> str | None:
        if not session_id:
            return None
        entry = self._sessions.get(session_id)
        if entry is None:
            return None
        if entry[0] < time.time():
            self._sessions.pop(session_id, None)
            return None
        return entry[1]

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)


class FleetServices:
    """Built synchronously (data dir, registry); broker and bridge start in the app lifespan."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.data_dir: DataDir = open_data_dir(settings.data_dir)
        self.registry = Registry(self.data_dir.registry_path)
        self.trust: TufRepo = open_tuf_repo(self.data_dir.root)  # TUF metadata (trust)
        self.bundles = BundleStore(data_dir=self.data_dir, registry=self.registry,
                                   max_bytes=settings.max_upload_bytes)
        self.sessions = ConsoleSessions(ttl_s=settings.session_ttl_s)
        self.metrics = ServerMetrics()
        self.broker: EmbeddedBroker | None = None
        self.bridge: MqttBridge | None = None
        self.deployer = Deployer(registry=self.registry, data_dir=self.data_dir,
                                 publish=self._publish, ttl_s=settings.instruction_ttl_s)
        self.rollout_store = RolloutStore(self.data_dir.registry_path)
        self.rollouts = RolloutDriver(registry=self.registry, store=self.rollout_store,
                                      deployer=self.deployer)
        self.mqtt_port: int | None = None
        self.mqtt_host: str = settings.host

    def _publish(self, device_id: str, envelope: bytes) -> None:
        if self.bridge is None:
            log.warning("no MQTT bridge: instruction for %s kept for the next connect",
                        device_id)
            return
        self.bridge.publish_instruction(device_id, envelope)

    async def start(self) -> None:
        external = self.settings.external_broker
        if external is None:
            self.broker = EmbeddedBroker(
                host=self.settings.host, port=self.settings.mqtt_port,
                authority=BrokerAuthority(self.registry, self.data_dir.mqtt_secret))
            await self.broker.start()
            assert self.broker.port is not None
            host, port = _connect_host(self.settings.host), self.broker.port
            password = self.data_dir.mqtt_secret
            username = None
        else:
            host, port = external.host, external.port
            password = external.password or self.data_dir.mqtt_secret
            username = external.username
        self.mqtt_host, self.mqtt_port = host, port
        bridge = MqttBridge(registry=self.registry, bundle_path=self.data_dir.bundle_path,
                            host=host, port=port, password=password,
                            max_window=self.settings.max_chunk_window,
                            shadow_store=self.rollout_store,
                            limits=self.settings.telemetry, metrics=self.metrics,
                            **({"username": username} if username else {}))
        await asyncio.to_thread(bridge.start)
        self.bridge = bridge
        self.rollouts.start(self.settings.rollout_tick_s)

    async def stop(self) -> None:
        await asyncio.to_thread(self.rollouts.stop)
        if self.bridge is not None:
            bridge, self.bridge = self.bridge, None
            await asyncio.to_thread(bridge.stop)
        if self.broker is not None:
            broker, self.broker = self.broker, None
            await broker.stop()
        self.rollout_store.close()
        self.registry.close()

    def mqtt_url_for(self, hostname: str | None) -> str:
        """The broker URL to hand a device that reached us as ``hostname``."""
        external = self.settings.external_broker
        if external is not None:
            return external.public_url()
        host = self.mqtt_host
        if hostname and self.settings.host in ("0.0.0.0", "::"):
            host = hostname
        return f"mqtt://{host}:{self.mqtt_port}"


def _connect_host(bind_host: str) -> str:
    return "127.0.0.1" if bind_host in ("0.0.0.0", "", "::") else bind_host
