"""Topic names: round trip for every kind, and refusal of ids that would break topics."""

from __future__ import annotations

import pytest

from ota.errors import ProtocolError
from ota.topics import (
    KINDS,
    PREFIX,
    SERVER_SUBSCRIPTIONS,
    DeviceTopics,
    parse_device_topic,
    validate_device_id,
)


def test_every_device_topic_parses_back_to_its_device_and_kind() -> None:
    t = DeviceTopics("dev-1.a_B")
    topics = {
        "state": t.state,
        "desired": t.desired,
        "telemetry": t.telemetry,
        "events": t.events,
        "chunks/req": t.chunk_request,
        "chunks": t.chunks,
        "shadow": t.shadow,
        "ack": t.ack,
    }
    assert set(topics) == set(KINDS)
    for kind, topic in topics.items():
        assert topic == f"{PREFIX}/devices/dev-1.a_B/{kind}"
        assert parse_device_topic(topic) == ("dev-1.a_B", kind)


def test_server_subscribes_to_the_five_device_to_server_topics() -> None:
    assert SERVER_SUBSCRIPTIONS == (
        "edgefleet/v1/devices/+/state",
        "edgefleet/v1/devices/+/telemetry",
        "edgefleet/v1/devices/+/events",
        "edgefleet/v1/devices/+/chunks/req",
        "edgefleet/v1/devices/+/shadow",
    )
    t = DeviceTopics("d")
    assert t.device_subscriptions == (t.desired, t.chunks, t.ack)


@pytest.mark.parametrize(
    "bad", ["", "+", "#", "a/b", "dev+1", "dev#", "-leading", ".x", "a" * 65, "dév", "a b", "a\x00"]
)
def test_device_ids_that_would_break_topics_are_refused(bad: str) -> None:
    with pytest.raises(ProtocolError):
        validate_device_id(bad)
    with pytest.raises(ProtocolError):
        DeviceTopics(bad)


def test_longest_valid_device_id_is_accepted() -> None:
    assert validate_device_id("a" * 64) == "a" * 64


@pytest.mark.parametrize(
    "topic",
    [
        "edgefleet/v1/devices/dev-1/unknown",
        "edgefleet/v1/devices/dev-1",
        "edgefleet/v1/devices/dev-1/chunks/req/extra",
        "edgefleet/v2/devices/dev-1/state",
        "other/dev-1/state",
        "edgefleet/v1/devices/+/state",
        "edgefleet/v1/devices//state",
    ],
)
def test_topics_outside_the_protocol_are_refused(topic: str) -> None:
    with pytest.raises(ProtocolError):
        parse_device_topic(topic)
