"""Fixes to amqtt 0.12.1, the embedded broker (see docs/adr/0002-embedded-broker-fixes.md).

amqtt acts on an existing session before it authenticates a new CONNECT, and four attacks
followed from that (tests/security/test_broker_attacks.py). ``HardenedBroker`` overrides
three ``Broker`` methods, each named with what it changes against amqtt 0.12.1:

- ``_initialize_client_session``: the CONNECT is authenticated, and its Last Will checked
  against the topic ACL, *before* any existing session is looked up. A refused CONNECT gets
  "not authorized" and is closed; it never deletes a session (clean session), never copies
  its credentials or will onto one, never takes over a live connection, so its will is
  never published. The authenticated username is recorded on the session
  (``PRINCIPAL_ATTR``) and the ACL reads that, not the CONNECT's mutable ``username``.
  Also copies ``will_retain`` onto a resumed session (amqtt forgets it).
- ``_publish_retained_messages_for_subscription``: retained messages go only to a session
  that holds that subscription, and only topics the ACL lets it receive; amqtt called it at
  connect for every filter of every client, pushing all retained messages to everyone.
- ``_subscriptions`` iterates a snapshot (``SnapshotDict``): amqtt's broadcast loop awaits
  inside ``for ... in self._subscriptions.items()`` and lost messages when a client
  subscribed or left meanwhile (found by the fleet simulator with 200 devices).
- ``stream_connected`` wraps each connection's reader in ``CappedReader`` and every
  session gets bounded queues and handler (``broker_limits.py``): payload size caps, a
  per-client rate limit and a bound on what waits for each session (issue 14, item 5).

``check_amqtt`` refuses to run the fixes over an amqtt whose replaced methods have gone,
and warns when the version is not the one they were checked against.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import ItemsView, Iterator
from typing import Any

import amqtt
from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.session import Session
from amqtt.utils import gen_client_id

from fleet_server.broker_auth import SERVER_USERNAME
from fleet_server.broker_limits import (
    AdmittingQueue,
    BoundedHandler,
    BrokerCounters,
    BrokerLimits,
    CappedReader,
    payload_cap,
)
from fleet_server.telemetry_limits import LogThrottle

log = logging.getLogger(__name__)

CHECKED_AMQTT_VERSION = "0.12.1"
"""The amqtt release whose ``Broker`` source the overrides below were written against."""

REPLACED = ("_initialize_client_session", "_publish_retained_messages_for_subscription",
            "stream_connected")
"""amqtt ``Broker`` methods this module replaces (their source is pinned by a test)."""

PRINCIPAL_ATTR = "edgefleet_principal"
"""Session attribute: the username this session's connection authenticated as."""


class AmqttMismatchError(RuntimeError):
    """The installed amqtt lacks a method the fixes replace: they would not apply."""


def check_amqtt() -> None:
    for name in REPLACED:
        if not inspect.iscoroutinefunction(getattr(Broker, name, None)):
            raise AmqttMismatchError(
                f"amqtt {amqtt.__version__} has no Broker.{name}: the embedded broker's "
                "security fixes do not apply (fleet_server/broker_fixes.py)")
    if amqtt.__version__ != CHECKED_AMQTT_VERSION:
        log.warning("amqtt %s is not %s, which fleet_server/broker_fixes.py was checked "
                    "against; run tests/security/test_broker_attacks.py",
                    amqtt.__version__, CHECKED_AMQTT_VERSION)


def principal(session: Session | None) -> str | None:
    """The authenticated username of ``session``'s connection (None: not authenticated)."""
    return getattr(session, PRINCIPAL_ATTR, None)


class SnapshotDict(dict[str, Any]):
    """A dict whose iteration and ``items()`` walk a copy, so writers may change it."""

    def __iter__(self) -> Iterator[str]:
        return iter(list(super().keys()))

    def items(self) -> ItemsView[str, Any]:  # type: ignore[override]
        return dict(super().items()).items()


class HardenedBroker(Broker):
    """amqtt's ``Broker`` with authentication first, ACL-checked wills and retained, and
    bounds on what one client can make it hold (``limits``; drops go to ``counters``)."""

    def __init__(self, *args: Any, limits: BrokerLimits | None = None,
                 counters: BrokerCounters | None = None, **kwargs: Any) -> None:
        check_amqtt()
        super().__init__(*args, **kwargs)
        self._subscriptions: SnapshotDict = SnapshotDict(self._subscriptions)
        self.limits = limits or BrokerLimits()
        self.counters = counters or BrokerCounters()
        self._rate = self.limits.rate_limiter()
        self._drop_log = LogThrottle()

    async def stream_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                               listener_name: str) -> None:
        # amqtt 0.12.1 broker.py 439-440, with a reader that refuses an oversized payload
        peer = writer.get_extra_info("peername")

        def refused() -> None:
            self.counters.disconnected("packet_too_large")
            log.warning("MQTT client %s sent a payload over %d bytes: connection closed",
                        peer, self.limits.max_packet_payload)

        capped = CappedReader(StreamReaderAdapter(reader), self.limits.max_packet_payload, refused)
        await self._client_connected(listener_name, capped, StreamWriterAdapter(writer))

    async def _initialize_client_session(self, reader: Any, writer: Any, remote_address: str,
                                         remote_port: int) -> tuple[Any, Session]:
        # amqtt 0.12.1 broker.py 479-539, with the CONNECT authorised before line 511.
        try:
            handler, incoming = await BoundedHandler.init_from_connect(
                reader, writer, self.plugins_manager)
        except (AMQTTError, NoDataError) as exc:
            raise AMQTTError(exc) from exc
        except MQTTError:
            await writer.close()
            raise
        refusal = await self._refusal(incoming)
        if refusal is not None:
            log.warning("MQTT CONNECT from %s:%s (client id %r, user %r) refused: %s",
                        remote_address, remote_port, incoming.client_id, incoming.username,
                        refusal)
            await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
            await writer.close()
            raise AMQTTError(f"CONNECT refused: {refusal}")
        client_session = incoming
        if incoming.clean_session:
            if incoming.client_id:
                await self._delete_session(incoming.client_id)
            else:
                incoming.client_id = gen_client_id()
            incoming.parent = 0
        elif incoming.client_id in self._sessions:
            client_session, _ = self._sessions[incoming.client_id]
            for field in ("will_flag", "will_message", "will_topic", "will_qos", "will_retain",
                          "keep_alive", "username", "password"):
                setattr(client_session, field, getattr(incoming, field))
            client_session.parent = 1
        else:
            incoming.parent = 0
        setattr(client_session, PRINCIPAL_ATTR, principal(incoming))
        delay = self.config.get("timeout-disconnect-delay", 0)
        if client_session.keep_alive > 0 and isinstance(delay, int):
            client_session.keep_alive += delay
        handler.bind(self.limits, self.counters)
        self._bound_queues(client_session)
        return handler, client_session

    # -- bounds (broker_limits.py) -------------------------------------------------------

    def _bound_queues(self, session: Session) -> None:
        """Give ``session`` admitting queues (again after amqtt's ``clear_queues``)."""
        for name, admit in (("delivered_message_queue", self._admit_published),
                            ("retained_messages", self._admit_queued)):
            old = getattr(session, name)
            if isinstance(old, AdmittingQueue):
                continue
            new = AdmittingQueue(functools.partial(admit, session))
            while not old.empty():
                new.put_nowait(old.get_nowait())
            setattr(session, name, new)

    def _admit_published(self, session: Session, queue: AdmittingQueue, message: Any) -> bool:
        """A PUBLISH from ``session``'s client: within its topic's cap and its rate limit."""
        size = len(message.data or b"")
        who = principal(session)
        if size > payload_cap(message.topic):
            return self._drop("too_large", size, session, message.topic)
        if who != SERVER_USERNAME and not self._rate.allow(who or str(session.client_id), size):
            return self._drop("rate_limited", size, session, message.topic)
        return True

    def _admit_queued(self, session: Session, queue: AdmittingQueue, message: Any) -> bool:
        """A message kept for offline ``session``: within its queue's bounds."""
        size = len(message.data or b"")
        if (queue.qsize() >= self.limits.queue_messages
                or queue.bytes + size > self.limits.queue_bytes):
            return self._drop("queue_full", size, session, message.topic)
        return True

    def _drop(self, reason: str, size: int, session: Session, topic: str | None) -> bool:
        self.counters.dropped(reason, size)
        allowed, suppressed = self._drop_log.allow()
        if allowed:
            log.warning("MQTT broker dropped a message of %d bytes on %r for client %r: %s%s",
                        size, topic, session.client_id, reason,
                        f" ({suppressed} more not logged)" if suppressed else "")
        return False

    async def _refusal(self, incoming: Session) -> str | None:
        """Why ``incoming`` (a fresh session from the CONNECT) is refused; None: accepted."""
        if not await self._authenticate(incoming, None):
            return "bad credentials"
        setattr(incoming, PRINCIPAL_ATTR, incoming.username)
        if incoming.will_flag and not await self._topic_filtering(
                incoming, incoming.will_topic or "", Action.PUBLISH):
            setattr(incoming, PRINCIPAL_ATTR, None)
            return f"last will on {incoming.will_topic!r}, a topic it may not publish to"
        return None

    async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Session) -> None:
        # amqtt 0.12.1 broker.py 1134-1158, limited to the session's own subscription and
        # to topics the ACL lets it receive, at the QoS it was granted.
        topic_filter = subscription[0]
        granted = [qos for s, qos in self._subscriptions.get(topic_filter, ())
                   if s.client_id == session.client_id]
        handler = self._get_handler(session)
        if not granted or handler is None:
            return
        sends = []
        for retained in list(self._retained_messages.values()):
            if not self._matches(retained.topic, topic_filter):
                continue
            if not await self._topic_filtering(session, retained.topic, Action.RECEIVE):
                continue
            qos = min(granted[0], retained.qos if retained.qos is not None else granted[0])
            sends.append(asyncio.ensure_future(
                handler.mqtt_publish(retained.topic, retained.data, qos, retain=True)))
        if sends:
            await asyncio.wait(sends)
