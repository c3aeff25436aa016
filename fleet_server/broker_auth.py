"""Who may connect to the embedded broker, and which topics each client may use.

Pure policy over the registry: the amqtt plugins in ``broker.py`` only call into it.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fleet_server.registry import Registry, hash_secret
from ota.errors import ProtocolError
from ota.topics import DeviceTopics, parse_device_topic

SERVER_USERNAME = "edgefleet-server"
SERVER_CLIENT_PREFIX = "edgefleet-server-"


@dataclass(frozen=True)
class BrokerAuthority:
    """Checks MQTT credentials and topic access against the registry."""

    registry: Registry
    server_secret: str

    def authenticate(self, *, client_id: str | None, username: str | None,
                     password: str | bytes | None) -> bool:
        if not username or password is None:
            return False
        secret = password.decode("utf-8", "replace") if isinstance(password, bytes) else password
        if username == SERVER_USERNAME:
            return hmac.compare_digest(secret.encode(), self.server_secret.encode())
        if client_id != username:
            return False  # a device connects with client id = device id = username
        stored = self.registry.device_secret_hash(device_id=username)
        if stored is None:
            return False
        return hmac.compare_digest(hash_secret(secret), stored)

    def may(self, *, username: str | None, topic: str | None, action: str) -> bool:
        """``action`` is "publish", "subscribe" or "receive" (amqtt's ``Action`` values)."""
        if username == SERVER_USERNAME:
            return True
        if not username or not topic:
            return False
        try:
            topics = DeviceTopics(username)
            if action == "publish":
                return topic in topics.device_publications
            if action in ("subscribe", "receive"):
                return topic in topics.device_subscriptions
        except ProtocolError:
            return False
        return False


def is_device_topic(topic: str) -> bool:
    try:
        parse_device_topic(topic)
    except ProtocolError:
        return False
    return True
