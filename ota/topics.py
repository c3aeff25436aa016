"""Topic names of protocol 1: the only place a topic is spelled."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ota.errors import ProtocolError

PREFIX = "edgefleet/v1"
DEVICES = f"{PREFIX}/devices"

DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

KINDS = ("state", "desired", "telemetry", "events", "chunks/req", "chunks", "shadow", "ack")
"""Topic kinds below ``edgefleet/v1/devices/{id}/``."""

SERVER_SUBSCRIPTIONS: tuple[str, ...] = (
    f"{DEVICES}/+/state",
    f"{DEVICES}/+/telemetry",
    f"{DEVICES}/+/events",
    f"{DEVICES}/+/chunks/req",
    f"{DEVICES}/+/shadow",
)
"""The wildcard filters the fleet server subscribes to."""


def validate_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is a valid device id, else raise ``ProtocolError``."""
    if not isinstance(device_id, str):
        raise ProtocolError(f"device id must be a string, got {type(device_id).__name__}")
    if DEVICE_ID_RE.fullmatch(device_id) is None:
        raise ProtocolError(
            f"invalid device id {device_id[:80]!r}: expected [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}"
        )
    return device_id


@dataclass(frozen=True)
class DeviceTopics:
    """The eight topics of one device."""

    device_id: str

    def __post_init__(self) -> None:
        validate_device_id(self.device_id)

    @property
    def base(self) -> str:
        return f"{DEVICES}/{self.device_id}"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def desired(self) -> str:
        return f"{self.base}/desired"

    @property
    def telemetry(self) -> str:
        return f"{self.base}/telemetry"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def chunk_request(self) -> str:
        return f"{self.base}/chunks/req"

    @property
    def chunks(self) -> str:
        return f"{self.base}/chunks"

    @property
    def shadow(self) -> str:
        """Device -> server ``ShadowReport`` (QoS 1, not retained)."""
        return f"{self.base}/shadow"

    @property
    def ack(self) -> str:
        """Server -> device ``ReportAck`` (QoS 1, not retained): the report seqs now stored."""
        return f"{self.base}/ack"

    @property
    def device_subscriptions(self) -> tuple[str, ...]:
        """What the device subscribes to (again in every ``on_connect``)."""
        return (self.desired, self.chunks, self.ack)

    @property
    def device_publications(self) -> tuple[str, ...]:
        """What the device may publish to (the broker ACL)."""
        return (self.state, self.telemetry, self.events, self.chunk_request, self.shadow)


def parse_device_topic(topic: str) -> tuple[str, str]:
    """Split a device topic into ``(device_id, kind)``; ``ProtocolError`` if it is not one."""
    if not isinstance(topic, str):
        raise ProtocolError(f"topic must be a string, got {type(topic).__name__}")
    head = DEVICES + "/"
    if not topic.startswith(head):
        raise ProtocolError(f"not an edgefleet device topic: {topic[:200]!r}")
    device_id, sep, kind = topic[len(head) :].partition("/")
    if not sep or kind not in KINDS:
        raise ProtocolError(f"unknown device topic kind in {topic[:200]!r}")
    validate_device_id(device_id)
    return device_id, kind
