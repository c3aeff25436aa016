"""The device record: every install fact of one device in one value, one file.

``DIR/state/device.json`` holds the install journal, the last applied instruction seq, the
bundle the journal is about, the shadow candidate (ref, sample rate, why it was refused)
and the operator's delegate override. The shell writes it atomically (temp file, fsync,
``os.replace``), so a crash leaves the old record or the new one, never a mix.

Before this record the same facts lived in five files (``state/journal.json``,
``state/applied_seq.json``, ``state/bundle_ref.json``, ``state/delegate_override.json``,
``shadow/shadow.json``); ``from_legacy`` imports them once (docs/install-state-machine.md).
Pure: bytes in, values out.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from ota import payload as p
from ota.errors import ProtocolError
from ota.install import Journal
from ota.instructions import BundleRef

__all__ = ["RECORD_FORMAT", "DeviceRecord", "ShadowRecord", "from_legacy"]

RECORD_FORMAT = 1
MAX_RECORD_BYTES = 256 * 1024


@dataclass(frozen=True)
class ShadowRecord:
    """The candidate the last instruction asked to shadow; ``failed`` says why it was
    refused (a new instruction may name another)."""

    ref: BundleRef
    rate: float = 0.0
    failed: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref.to_dict(), "rate": self.rate, "failed": self.failed}

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> ShadowRecord:
        ref = p.get_obj(obj, "ref", "shadow")
        if ref is None:
            raise ProtocolError("shadow.ref is missing")
        rate = obj.get("rate", 0.0)
        p.require(isinstance(rate, int | float) and not isinstance(rate, bool)
                  and 0.0 <= rate <= 1.0, "shadow.rate must be a number in [0, 1]")
        return cls(BundleRef.from_dict(ref, "shadow.ref"), float(rate),
                   p.get_opt_str(obj, "failed", "shadow"))


@dataclass(frozen=True)
class DeviceRecord:
    journal: Journal = Journal()
    applied_seq: int = 0
    bundle: BundleRef | None = None
    """The bundle the journal's install is about (resumed after a restart)."""
    shadow: ShadowRecord | None = None
    delegate_override: dict[str, str] | None = None

    def replace(self, **changes: Any) -> DeviceRecord:
        return dataclasses.replace(self, **changes)

    def to_bytes(self) -> bytes:
        return p.dumps({
            "format_version": RECORD_FORMAT,
            "journal": self.journal.to_dict(),
            "applied_seq": self.applied_seq,
            "bundle": None if self.bundle is None else self.bundle.to_dict(),
            "shadow": None if self.shadow is None else self.shadow.to_dict(),
            "delegate_override": self.delegate_override,
        })

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceRecord:
        """``ProtocolError`` for a record that does not parse (the shell starts afresh)."""
        what = "device record"
        obj = p.load_object(data, max_size=MAX_RECORD_BYTES, what=what)
        if obj.get("format_version") != RECORD_FORMAT:
            raise ProtocolError(f"{what}: unsupported format_version "
                                f"{obj.get('format_version')!r}")
        journal = p.get_obj(obj, "journal", what)
        p.require(journal is not None, f"{what}: journal is missing")
        bundle, shadow = p.get_obj(obj, "bundle", what), p.get_obj(obj, "shadow", what)
        return cls(
            journal=Journal.from_bytes(json.dumps(journal).encode()),
            applied_seq=p.get_int(obj, "applied_seq", what),
            bundle=None if bundle is None else BundleRef.from_dict(bundle),
            shadow=None if shadow is None else ShadowRecord.from_dict(shadow),
            delegate_override=_override(obj.get("delegate_override")),
        )


def _override(obj: Any) -> dict[str, str] | None:
    if not isinstance(obj, dict):
        return None
    out = {k: v for k, v in obj.items() if k in ("variant", "delegate") and isinstance(v, str)}
    return out or None


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
    return DeviceRecord(journal=j, applied_seq=seq if isinstance(seq, int) and seq >= 0 else 0,
                        bundle=ref, shadow=shadow_rec,
                        delegate_override=_override(_json(delegate_override)))
