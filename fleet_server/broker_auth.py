"""Who may connect to the embedded broker, and which topics each client may use.

Pure policy over the registry: the amqtt plugins in ``broker.py`` only call into it.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from fleet_server.registry import Registry, hash_secret
from ota.errors import ProtocolError
from ota.topics import DeviceTopics, parse_device_topic

SERVER_USERNAME = "edgefleet-server"
SERVER_CLIENT_PREFIX = "edgefleet-server-"


@dataclass(frozen=True)
class BrokerAuthority:
    """Checks MQTT credentials and topic access against the registry.

    With ``require_cert`` (TLS, the default) a client is who its certificate says: the
    handshake has verified the chain to the fleet CA and the validity dates, and
    ``authenticate_cert`` checks the common name against the client id, the username (if
    sent) and the registry; passwords are not used. The server's own client is recognised
    by its certificate's SHA-256 (``server_cert_sha256``), not by its name alone.
    Without it (``--insecure``) a client logs in with its username and MQTT secret."""

    registry: Registry
    server_secret: str
    require_cert: bool = False
    server_cert_sha256: str | None = None
    revoked: Callable[[str], bool] | None = None
    """Whether a device is revoked (``RevocationList.is_revoked``): refused on either path."""

    def authenticate_cert(self, *, client_id: str | None, username: str | None,
                          common_name: str | None, cert_sha256: str | None) -> str | None:
        """Why a TLS client is refused (None: accepted as ``common_name``)."""
        if not common_name:
            return "no client certificate"
        if username and username != common_name:
            return f"username {username!r} is not the certificate's CN {common_name!r}"
        if common_name == SERVER_USERNAME:
            if cert_sha256 is None or cert_sha256 != self.server_cert_sha256:
                return "a certificate named after the server that is not the server's"
            if not (client_id or "").startswith(SERVER_CLIENT_PREFIX):
                return f"server client id {client_id!r} lacks {SERVER_CLIENT_PREFIX!r}"
            return None
        if client_id != common_name:
            return f"client id {client_id!r} is not the certificate's CN {common_name!r}"
        if not self.registry.device_exists(device_id=common_name):
            return f"no enrolled device {common_name!r}"
        if self.revoked is not None and self.revoked(common_name):
            return f"device {common_name!r} is revoked"
        return None

    def authenticate(self, *, client_id: str | None, username: str | None,
                     password: str | bytes | None) -> bool:
        if self.require_cert:
            return False  # TLS listener: only authenticate_cert admits a client
        if not username or password is None:
            return False
        secret = password.decode("utf-8", "replace") if isinstance(password, bytes) else password
        if username == SERVER_USERNAME:
            return hmac.compare_digest(secret.encode(), self.server_secret.encode())
        if client_id != username:
            return False  # a device connects with client id = device id = username
        if self.revoked is not None and self.revoked(username):
            return False
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
