"""Cutting a revoked device off an external Mosquitto, through its dynamic-security plugin.

Mosquitto keeps a connection open until it drops: neither a new CRL nor a reload (SIGHUP)
closes it (``mosquitto_security_apply`` re-checks only that a client still presents a
certificate with a CN). What does close it is the dynamic-security plugin, which kicks
every connection of a username whose dynsec client is changed. ``fleet-server
mosquitto-config`` loads that plugin with one role, ``REVOKED_ROLE``, that denies every
publish, delivery and subscription, and lets only the server's control identity
(``CONTROL_CN``, its own certificate) publish to ``$CONTROL/dynamic-security/v1``.

On revocation the server sends, in one control message, for the device's id (its
certificate's CN, which ``use_identity_as_username`` makes its username):

- ``createClient`` with ``REVOKED_ROLE`` (refused as already existing on a second
  revocation, which changes nothing), ``addClientRole`` (the same, for a client an operator
  made), then ``disableClient``: Mosquitto closes the device's open connections before it
  answers (measured in ``bench/revocation.py``).

A reconnect still passes the TLS handshake until Mosquitto rereads the CRL (its next
SIGHUP), but with the role every PUBLISH is denied and every SUBSCRIBE refused, so the
connection carries nothing (and the server drops whatever it would send:
``MqttBridge.revoked``). Mosquitto answers on ``$CONTROL/dynamic-security/v1/response``;
``kick`` waits for that answer, so a True means the connection is already closed.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleet_server.errors import FleetError

__all__ = ["CONTROL_TOPIC", "RESPONSE_TOPIC", "REVOKED_ROLE", "BrokerControl",
           "revoked_role", "revocation_commands"]

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
REVOKED_ROLE = "edgefleet-revoked"

_ONE_AT_A_TIME = threading.Lock()
"""Mosquitto makes the CN the client id (``use_username_as_clientid``): a second control
connection would take the first one's session over, so this process sends one at a time
(two replicas revoking at the same instant may still collide: the loser answers
``broker_error``; revoking again is harmless)."""


class BrokerControlError(FleetError):
    """The broker did not confirm the command (unreachable, refused, or no answer)."""


def revoked_role() -> dict[str, Any]:
    """The dynsec role of a revoked device: nothing in, nothing out, no subscriptions."""
    deny = [("publishClientSend", "#"), ("publishClientReceive", "#"),
            ("subscribePattern", "#")]
    return {"rolename": REVOKED_ROLE,
            "acls": [{"acltype": t, "topic": topic, "priority": 0, "allow": False}
                     for t, topic in deny]}


def revocation_commands(device_id: str) -> list[dict[str, Any]]:
    return [{"command": "createClient", "username": device_id,
             "roles": [{"rolename": REVOKED_ROLE}]},
            {"command": "addClientRole", "username": device_id, "rolename": REVOKED_ROLE},
            {"command": "disableClient", "username": device_id}]


@dataclass(frozen=True)
class BrokerControl:
    """One short MQTT v5 connection per command, as ``CONTROL_CN`` (its certificate)."""

    host: str
    port: int
    ca_bundle: Path
    cert: Path
    key: Path
    timeout_s: float = 10.0

    def kick(self, device_id: str) -> None:
        """Mark ``device_id`` revoked in the broker and close its connections; returns once
        the broker confirms (BrokerControlError otherwise)."""
        answers = self.run(revocation_commands(device_id))
        disable = [a for a in answers if a.get("command") == "disableClient"]
        if not disable or disable[0].get("error"):
            raise BrokerControlError(f"the broker refused to disable {device_id!r}: {answers}")

    def run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send ``commands`` in one control message; the broker's answers, in order."""
        with _ONE_AT_A_TIME:
            return self._run(commands)

    def _run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        answered, result = threading.Event(), {}
        subscribed, failure = threading.Event(), []
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.tls_set(ca_certs=str(self.ca_bundle), certfile=str(self.cert),
                       keyfile=str(self.key), cert_reqs=ssl.CERT_REQUIRED,
                       tls_version=ssl.PROTOCOL_TLS_CLIENT)

        def on_connect(c: mqtt.Client, u: Any, f: Any, reason: Any, p: Any) -> None:
            if reason.is_failure:
                failure.append(f"CONNACK {reason}")
                answered.set()
            else:
                c.subscribe(RESPONSE_TOPIC, qos=1)

        def on_subscribe(c: mqtt.Client, u: Any, mid: int, reasons: Any, p: Any) -> None:
            if any(r.is_failure for r in reasons):
                failure.append(f"SUBSCRIBE {RESPONSE_TOPIC} refused: {reasons[0]}")
                answered.set()
            else:
                subscribed.set()
                c.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)

        def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
            try:
                result["responses"] = json.loads(msg.payload)["responses"]
            except (ValueError, KeyError, TypeError) as e:
                failure.append(f"unreadable answer: {e}")
            answered.set()

        client.on_connect, client.on_subscribe = on_connect, on_subscribe
        client.on_message = on_message
        try:
            client.connect(self.host, self.port, keepalive=30)
        except (OSError, ssl.SSLError) as e:
            raise BrokerControlError(f"cannot reach the broker at {self.host}:{self.port}: "
                                     f"{e}") from e
        client.loop_start()
        try:
            if not answered.wait(self.timeout_s):
                step = "no answer" if subscribed.is_set() else "no SUBACK"
                raise BrokerControlError(
                    f"{step} from the broker's dynamic-security plugin within "
                    f"{self.timeout_s:g} s (is it loaded? docs/operations.md)")
        finally:
            client.disconnect()
            client.loop_stop()
        if failure:
            raise BrokerControlError(failure[0])
        return list(result["responses"])
