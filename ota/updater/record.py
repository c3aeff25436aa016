"""The device record: every install fact of one device in one value, one file.

``DIR/state/device.json`` holds the install journal, the last applied instruction seq, the
bundle the journal is about, the shadow candidate (ref, sample rate, pace, why it was refused)
and the operator's delegate override. The shell writes it atomically (temp file, fsync,
``os.replace``), so a crash leaves the old record or the new one, never a mix.

Before this record the same facts lived in five files (``state/journal.json``,
``state/applied_seq.json``, ``state/bundle_ref.json``, ``state/delegate_override.json``,
``shadow/shadow.json``); ``from_legacy`` imports them once (docs/install-state-machine.md).
Pure: bytes in, values out.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar

import msgspec
from msgspec import Meta

from ota import payload as p
from ota.delta import DeltaRef
from ota.errors import ProtocolError
from ota.install import Journal
from ota.instructions import BundleRef
from ota.model import (
    FLOAT_MAX,
    INT64_MAX,
    Count,
    Fraction,
    Model,
    load_json,
    replace,
    validate,
)

__all__ = ["RECORD_FORMAT", "DeviceRecord", "ShadowRecord", "from_legacy"]

RECORD_FORMAT = 1
MAX_RECORD_BYTES = 256 * 1024

PositiveNumber = Annotated[float, Meta(gt=0.0, le=FLOAT_MAX)]


class ShadowRecord(Model, frozen=True):
    """The candidate the last instruction asked to shadow; ``failed`` says why it was
    refused (a new instruction may name another)."""

    WHAT: ClassVar[str] = "shadow"

    ref: BundleRef
    rate: Fraction = 0.0
    failed: str | None = None
    pace: PositiveNumber | None = None
    """Samples per minute the instruction asked for (None: the device's configured pace)."""

    def to_dict(self) -> dict[str, Any]:
        out = {"ref": self.ref.to_dict(), "rate": self.rate, "failed": self.failed}
        return out if self.pace is None else {**out, "pace": self.pace}

    @classmethod
    def from_dict(cls, obj: dict[str, Any], what: str = "shadow") -> ShadowRecord:
        return validate(cls, obj, what)


def _override(obj: Any) -> dict[str, str] | None:
    """The operator's preference, kept leniently: only its string ``variant`` and
    ``delegate`` (the installer checks them against the bundle)."""
    if not isinstance(obj, dict):
        return None
    out = {k: v for k, v in obj.items() if k in ("variant", "delegate") and isinstance(v, str)}
    return out or None


class DeviceRecord(Model, frozen=True):
    """Every install fact of one device (``delegate_override`` is kept leniently: only
    its string ``variant`` and ``delegate``)."""

    WHAT: ClassVar[str] = "device record"

    journal: Journal = msgspec.field(default_factory=Journal)
    applied_seq: Count = 0
    bundle: BundleRef | None = None
    """The bundle the journal's install is about (resumed after a restart)."""
    shadow: ShadowRecord | None = None
    delegate_override: dict[str, Any] | None = None
    delta: DeltaRef | None = None
    """The delta being fetched for ``bundle`` (ota.delta; None: the bundle itself is)."""

    def __post_init__(self) -> None:
        msgspec.structs.force_setattr(self, "delegate_override", _override(self.delegate_override))
        super().__post_init__()

    def replace(self, **changes: Any) -> DeviceRecord:
        return replace(self, **changes)

    def to_bytes(self) -> bytes:
        return p.dumps({
            "format_version": RECORD_FORMAT,
            "journal": self.journal.to_dict(),
            "applied_seq": self.applied_seq,
            "bundle": None if self.bundle is None else self.bundle.to_dict(),
            "shadow": None if self.shadow is None else self.shadow.to_dict(),
            "delegate_override": self.delegate_override,
            # written only when set, so records without a delta keep their bytes
            **({} if self.delta is None else {"delta": self.delta.to_dict()}),
        })

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceRecord:
        """``ProtocolError`` naming the field for a record that does not parse (the shell
        then starts afresh)."""
        what = "device record"
        obj = load_json(data, max_size=MAX_RECORD_BYTES, what=what)
        version = obj.get("format_version") if isinstance(obj, dict) else None
        if type(version) is not int or version != RECORD_FORMAT:
            raise ProtocolError(f"{what}: unsupported format_version {version!r:.40}")
        for key in ("journal", "applied_seq"):  # the file always carries both
            if key not in obj:
                raise ProtocolError(f"{what}: missing '{key}'")
        if isinstance(obj["journal"], dict):  # as its own file holds it: format and every field
            try:
                Journal.from_bytes(json.dumps(obj["journal"]).encode())
            except ProtocolError as e:
                raise ProtocolError(f"{what}: journal {str(e).removeprefix('journal: ')}") from None
        return validate(cls, obj, what)


def _json(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


def from_legacy(*, journal: bytes | None, applied_seq: bytes | None,
                bundle_ref: bytes | None, delegate_override: bytes | None,
                shadow: bytes | None) -> DeviceRecord:
    """The record the five files of the old layout describe (their bytes, None when a file
    is absent). An unreadable file counts as absent, as the old agent treated it."""
    j = Journal()
    if journal is not None:
        try:
            j = Journal.from_bytes(journal)
        except ProtocolError:
            j = Journal(error="journal was unreadable and was reset")
    raw_seq = _json(applied_seq)
    seq = raw_seq.get("applied_seq", 0) if isinstance(raw_seq, dict) else 0
    ref = None
    if isinstance(raw := _json(bundle_ref), dict):
        try:
            ref = BundleRef.from_dict(raw)
        except ProtocolError:
            ref = None
    shadow_rec = None
    if isinstance(raw := _json(shadow), dict):
        try:
            shadow_rec = ShadowRecord.from_dict(raw)
        except ProtocolError:
            shadow_rec = None
    ok = type(seq) is int and 0 <= seq <= INT64_MAX
    return DeviceRecord(journal=j, applied_seq=seq if ok else 0,
                        bundle=ref, shadow=shadow_rec,
                        delegate_override=_override(_json(delegate_override)))
