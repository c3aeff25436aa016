"""The embedded amqtt (MQTT 3.1.1) broker with registry-backed auth and a topic ACL."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
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
from fleet_server.telemetry_limits import LogThrottle
from fleet_server.tls import ServerTls, peer_common_name, server_context

log = logging.getLogger(__name__)


class BrokerStartError(FleetError):
    """The embedded broker could not bind or start."""


class RegistryAuthPlugin(BaseAuthPlugin):
    """Accepts a client only if the registry knows it: by its TLS client certificate (the
    authority requires one), else by its username and password (``--insecure``)."""

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
        if self.authority.require_cert:
            return self._authenticate_cert(self.authority, session)
        try:
            return self.authority.authenticate(
                client_id=session.client_id, username=session.username,
                password=session.password)
        except Exception:  # never let a registry hiccup crash the broker
            log.exception("authentication check failed")
            return False

    @staticmethod
    def _authenticate_cert(authority: BrokerAuthority, session: Session) -> bool:
        try:
            der = session.ssl_object.getpeercert(binary_form=True) if session.ssl_object else None
            refusal = authority.authenticate_cert(
                client_id=session.client_id, username=session.username,
                common_name=peer_common_name(session.ssl_object),
                cert_sha256=hashlib.sha256(der).hexdigest() if der else None)
        except Exception:  # never let a registry hiccup crash the broker
            log.exception("certificate authentication check failed")
            return False
        if refusal is not None:
            log.warning("MQTT client %r from %s refused: %s", session.client_id,
                        session.remote_address, refusal)
            return False
        # the principal is the certificate's CN (equal to the username when one was sent)
        session.username = peer_common_name(session.ssl_object)
        return True


class DeviceTopicAclPlugin(BaseTopicPlugin):
    """Devices may publish and subscribe only to their own topics; each refused publish or
    subscribe is logged (at most 100 lines per 10 s per broker, the rest counted in the next
    line)."""

    authority: BrokerAuthority | None = None

    @dataclass
    class Config:
        """No options: the authority is attached after the broker is built."""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self.authority = None
        self._denials = LogThrottle(lines=100, period_s=10.0)

    async def topic_filtering(self, *, session: Session | None = None, topic: str | None = None,
                              action: Action | None = None) -> bool | None:
        if self.authority is None or session is None or action is None:
            return False
        # the username this connection authenticated as, never the CONNECT's own field
        who = principal(session)
        allowed = self.authority.may(username=who, topic=topic, action=str(action))
        if not allowed and str(action) in ("publish", "subscribe"):
            may_log, suppressed = self._denials.allow()
            if may_log:
                log.warning("MQTT ACL refused %r (client %r): %s on %r%s", who,
                            session.client_id, action, topic,
                            f" ({suppressed} more refusals not logged)" if suppressed else "")
        return allowed


_PLUGINS: dict[str, dict[str, Any]] = {
    f"{RegistryAuthPlugin.__module__}.{RegistryAuthPlugin.__name__}": {},
    f"{DeviceTopicAclPlugin.__module__}.{DeviceTopicAclPlugin.__name__}": {},
}


class _TlsBroker(HardenedBroker):
    """amqtt asks for a client certificate but accepts a client without one
    (``CERT_OPTIONAL``); this listener requires one that chains to the fleet CA."""

    @staticmethod
    def _create_ssl_context(listener: Any) -> ssl.SSLContext:
        return server_context(ca_bundle=listener["cafile"], cert=listener["certfile"],
                              key=listener["keyfile"], require_client_cert=True)


class EmbeddedBroker:
    """An amqtt broker in the current asyncio loop; ``port`` is the bound port after start.

    With ``tls`` the listener speaks MQTT over TLS only and requires a client certificate
    from the fleet CA (the authority must then ``require_cert``); without it, plain TCP.
    ``limits`` bound what one client can make it hold; what it drops is counted in
    ``metrics`` (``edgefleet_broker_*``, docs/operations.md)."""

    def __init__(self, *, host: str, port: int, authority: BrokerAuthority,
                 limits: BrokerLimits | None = None,
                 metrics: ServerMetrics | None = None, tls: ServerTls | None = None) -> None:
        if (tls is not None) != authority.require_cert:
            raise ValueError("a TLS listener needs an authority that requires certificates, "
                             "and only a TLS listener can have one")
        self._tls = tls
        self._host = host
        self._requested_port = port
        self._authority = authority
        self._limits = limits or BrokerLimits()
        self._counters = BrokerCounters(metrics)
        self._broker: HardenedBroker | None = None
        self.port: int | None = None

    async def start(self) -> None:
        listener: dict[str, Any] = {"type": "tcp", "bind": f"{self._host}:{self._requested_port}"}
        if self._tls is not None:
            listener.update(ssl=True, cafile=str(self._tls.ca_bundle),
                            certfile=str(self._tls.cert), keyfile=str(self._tls.key))
        config: dict[str, Any] = {"listeners": {"default": listener}, "plugins": dict(_PLUGINS)}
        broker_class = HardenedBroker if self._tls is None else _TlsBroker
        broker = broker_class(config, loop=asyncio.get_running_loop(),
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
        return f"{'mqtts' if self._tls else 'mqtt'}://{self._host}:{self.port}"

    async def disconnect(self, client_id: str) -> bool:
        """Close ``client_id``'s connection now (a revoked device); False if not connected.
        Done as amqtt's own session take-over does: connection closed, then handler stopped."""
        broker = self._broker
        entry = broker._sessions.get(client_id) if broker is not None else None  # no public API
        if entry is None:
            return False
        session, handler = entry
        if not session.transitions.is_connected():
            return False
        await handler.handle_connection_closed()
        await handler.stop()
        log.warning("MQTT client %r disconnected: revoked", client_id)
        return True

    async def stop(self) -> None:
        if self._broker is not None:
            broker, self._broker = self._broker, None
            try:
                await broker.shutdown()
            except Exception:
                log.exception("broker shutdown failed")
