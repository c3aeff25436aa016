"""``ReportAck``: the server's end-to-end confirmation of stored device reports.

A device's durable reports (``Telemetry``, ``Event``, ``ShadowReport``) share one sequence
per device. After the server has committed a batch of them to its database it publishes a
``ReportAck`` on the device's ``ack`` topic naming each stored ``seq`` (duplicates of rows it
already holds are confirmed again). The device deletes an outbox record only when its seq is
confirmed; a broker PUBACK only means the broker has it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ota import payload as p
from ota.limits import DEFAULT_LIMITS, PROTOCOL_VERSION, ProtocolLimits
from ota.topics import validate_device_id

MAX_ACK_SEQS = 1024
"""Most seqs one ``ReportAck`` names (about 20 KiB of JSON); the server splits larger batches."""


@dataclass(frozen=True)
class ReportAck:
    """``{"protocol": 1, "device_id": "dev-1", "seqs": [41, 42, 44]}``."""

    WHAT: ClassVar[str] = "ReportAck"

    device_id: str
    seqs: tuple[int, ...]

    def __post_init__(self) -> None:
        validate_device_id(self.device_id)
        p.require(isinstance(self.seqs, tuple), "seqs must be a tuple")
        p.require(0 < len(self.seqs) <= MAX_ACK_SEQS,
                  f"seqs must name 1..{MAX_ACK_SEQS} sequence numbers, got {len(self.seqs)}")
        for seq in self.seqs:
            p.check_int(seq, "seqs[]")

    def to_dict(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "seqs": list(self.seqs)}

    def to_bytes(self) -> bytes:
        return p.dumps({"protocol": PROTOCOL_VERSION, **self.to_dict()})

    @classmethod
    def from_bytes(cls, b: bytes, limits: ProtocolLimits = DEFAULT_LIMITS) -> ReportAck:
        obj = p.load_object(b, max_size=limits.max_json_payload, what=cls.WHAT)
        p.check_protocol(obj, cls.WHAT)
        seqs = obj.get("seqs")
        p.require(isinstance(seqs, list), f"{cls.WHAT}: 'seqs' must be a list of integers")
        return cls(device_id=p.get_str(obj, "device_id", cls.WHAT), seqs=tuple(seqs))

    @classmethod
    def batches(cls, device_id: str, seqs: list[int]) -> list[ReportAck]:
        """``seqs`` (sorted, deduplicated) split into acks of at most ``MAX_ACK_SEQS``."""
        ordered = sorted(set(seqs))
        return [cls(device_id, tuple(ordered[i:i + MAX_ACK_SEQS]))
                for i in range(0, len(ordered), MAX_ACK_SEQS)]
