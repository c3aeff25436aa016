"""``ReportAck``: the server's end-to-end confirmation of stored device reports.

A device's durable reports (``Telemetry``, ``Event``, ``ShadowReport``) share one sequence
per device. After the server has committed a batch of them to its database it publishes a
``ReportAck`` on the device's ``ack`` topic naming each stored ``seq`` (duplicates of rows it
already holds are confirmed again). The device deletes an outbox record only when its seq is
confirmed; a broker PUBACK only means the broker has it.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import AfterValidator, Field
from pydantic import dataclasses as pdc

from ota import payload as p
from ota.limits import DEFAULT_LIMITS, PROTOCOL_VERSION, ProtocolLimits
from ota.model import CONFIG, Count, Declared, DeviceId, load_message, protocol_model, validate

MAX_ACK_SEQS = 1024
"""Most seqs one ``ReportAck`` names (about 20 KiB of JSON); the server splits larger batches."""


def _one_batch(seqs: tuple[int, ...]) -> tuple[int, ...]:
    if not 0 < len(seqs) <= MAX_ACK_SEQS:
        raise ValueError(f"must name 1..{MAX_ACK_SEQS} sequence numbers, got {len(seqs)}")
    return seqs


AckSeqs = Annotated[
    tuple[Count, ...], AfterValidator(_one_batch),
    Field(json_schema_extra={"minItems": 1, "maxItems": MAX_ACK_SEQS}),
]


@protocol_model("ReportAck")
@pdc.dataclass(frozen=True, config=CONFIG)
class ReportAck(Declared):
    """``{"protocol": 1, "device_id": "dev-1", "seqs": [41, 42, 44]}``."""

    WHAT: ClassVar[str] = "ReportAck"

    device_id: DeviceId
    seqs: AckSeqs

    def to_bytes(self) -> bytes:
        return p.dumps({"protocol": PROTOCOL_VERSION, **self.to_dict()})

    @classmethod
    def from_bytes(cls, b: bytes, limits: ProtocolLimits = DEFAULT_LIMITS) -> ReportAck:
        obj = load_message(b, max_size=limits.max_json_payload, what=cls.WHAT)
        return validate(cls, obj, cls.WHAT)

    @classmethod
    def batches(cls, device_id: str, seqs: list[int]) -> list[ReportAck]:
        """``seqs`` (sorted, deduplicated) split into acks of at most ``MAX_ACK_SEQS``."""
        ordered = sorted(set(seqs))
        return [cls(device_id, tuple(ordered[i:i + MAX_ACK_SEQS]))
                for i in range(0, len(ordered), MAX_ACK_SEQS)]
