"""``ReportAck``: the server's end-to-end confirmation of stored device reports.

A device's durable reports (``Telemetry``, ``Event``, ``ShadowReport``) share one sequence
per device. After the server has committed a batch of them to its database it publishes a
``ReportAck`` on the device's ``ack`` topic naming each stored ``seq`` (duplicates of rows it
already holds are confirmed again). The device deletes an outbox record only when its seq is
confirmed; a broker PUBACK only means the broker has it.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from msgspec import Meta

from ota import payload as p
from ota.limits import DEFAULT_LIMITS, PROTOCOL_VERSION, ProtocolLimits
from ota.model import Count, DeviceId, Model, field_error, load_typed

MAX_ACK_SEQS = 1024
"""Most seqs one ``ReportAck`` names (about 20 KiB of JSON); the server splits larger batches."""


AckSeqs = Annotated[tuple[Count, ...], Meta(
    extra_json_schema={"minItems": 1, "maxItems": MAX_ACK_SEQS})]


class ReportAck(Model, frozen=True):
    """``{"protocol": 1, "device_id": "dev-1", "seqs": [41, 42, 44]}``."""

    WHAT: ClassVar[str] = "ReportAck"

    device_id: DeviceId
    seqs: AckSeqs

    def check(self) -> None:
        if not 0 < len(self.seqs) <= MAX_ACK_SEQS:
            raise field_error("seqs", f"must name 1..{MAX_ACK_SEQS} sequence numbers, "
                                      f"got {len(self.seqs)}")

    def to_bytes(self) -> bytes:
        return p.dumps({"protocol": PROTOCOL_VERSION, **self.to_dict()})

    @classmethod
    def from_bytes(cls, b: bytes, limits: ProtocolLimits = DEFAULT_LIMITS) -> ReportAck:
        return load_typed(cls, b, max_size=limits.max_json_payload, what=cls.WHAT)

    @classmethod
    def batches(cls, device_id: str, seqs: list[int]) -> list[ReportAck]:
        """``seqs`` (sorted, deduplicated) split into acks of at most ``MAX_ACK_SEQS``."""
        ordered = sorted(set(seqs))
        return [cls(device_id, tuple(ordered[i:i + MAX_ACK_SEQS]))
                for i in range(0, len(ordered), MAX_ACK_SEQS)]
