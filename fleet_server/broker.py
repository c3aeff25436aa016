"""The embedded amqtt (MQTT 3.1.1) broker with registry-backed auth and a topic ACL."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from fleet_server.broker_auth import BrokerAuthority
from fleet_server.broker_fixes import HardenedBroker, principal
from fleet_server.broker_limits import BrokerCounters, BrokerLimits
from fleet_server.errors import FleetError
from fleet_server.metrics import ServerMetrics

log = logging.getLogger(__name__)


class BrokerStartError(FleetError):
    """The embedded broker could not bind or start."""


class RegistryAuthPlugin(BaseAuthPlugin):
    """Accepts a client only if the registry knows its username and password."""

    authority: BrokerAuthority | None = None

    @dataclass
    class Config:
        """No options: the authority is attached after the broker is built."""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self.authority = None

    async def authenticate(self, *, session: Session) -> bool | None:
        if self.authority is None or session is None:
            return False
        try:
            return self.authority.authenticate(
                client_id=session.client_id, username=session.username,
                password=session.password)
        except Exception:  # never let a registry hiccup crash the broker
            log.exception("authentication check failed")
            return False


class DeviceTopicAclPlugin(BaseTopicPlugin):
    """Devices may publish and subscribe only to their own topics."""

    authority: BrokerAuthority | None = None

    @dataclass
    class Config:
        """No options: the authority is attached after the broker is built."""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self.authority = None

    async def topic_filtering(self, *, session: Session | None = None, topic: str | None = None,
                              action: Action | None = None) -> bool | None:
        if self.authority is None or session is None or action is None:
            return False
        # the username this connection authenticated as, never the CONNECT's own field
        return self.authority.may(username=principal(session), topic=topic, action=str(action))


_PLUGINS: dict[str, dict[str, Any]] = {
    f"{RegistryAuthPlugin.__module__}.{RegistryAuthPlugin.__name__}": {},
    f"{DeviceTopicAclPlugin.__module__}.{DeviceTopicAclPlugin.__name__}": {},
}


class EmbeddedBroker:
    """An amqtt broker in the current asyncio loop; ``port`` is the bound port after start.

    ``limits`` bound what one client can make it hold; what it drops is counted in
    ``metrics`` (``edgefleet_broker_*``, docs/operations.md)."""

    def __init__(self, *, host: str, port: int, authority: BrokerAuthority,
                 limits: BrokerLimits | None = None,
                 metrics: ServerMetrics | None = None) -> None:
        self._host = host
        self._requested_port = port
        self._authority = authority
        self._limits = limits or BrokerLimits()
        self._counters = BrokerCounters(metrics)
        self._broker: HardenedBroker | None = None
        self.port: int | None = None

    async def start(self) -> None:
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self._host}:{self._requested_port}"}},
            "plugins": dict(_PLUGINS),
        }
        broker = HardenedBroker(config, loop=asyncio.get_running_loop(),
                                plugin_namespace=f"edgefleet.broker.{id(self)}",
                                limits=self._limits, counters=self._counters)
        for plugin in broker.plugins_manager.plugins:
            if isinstance(plugin, RegistryAuthPlugin | DeviceTopicAclPlugin):
                plugin.authority = self._authority
        try:
            await broker.start()
        except Exception as e:
            raise BrokerStartError(
                f"cannot start MQTT broker on {self._host}:{self._requested_port}: {e}") from e
        server = broker._servers["default"].instance  # amqtt exposes no public accessor
        self.port = int(server.sockets[0].getsockname()[1])
        self._broker = broker
        log.info("embedded MQTT broker listening on %s:%s", self._host, self.port)

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("broker not started")
        return f"mqtt://{self._host}:{self.port}"

    async def stop(self) -> None:
        if self._broker is not None:
            broker, self._broker = self._broker, None
            try:
                await broker.shutdown()
            except Exception:
                log.exception("broker shutdown failed")
