"""Rebuild the instruction's bundle from a fetched delta and the active slot's files.

The delta (``model_bundles.delta_format``) names the bundle it starts from; the active slot
must hold exactly that bundle (``current.json``'s SHA-256) and every base file it reads must
match the delta's listed hash. The rebuilt ``.efb`` is written beside the downloads and
counts only when its size and SHA-256 are the instruction's bundle's (which the TUF check
and the fleet signature already pinned); the installer then verifies it like any download
(publisher signature, manifest, every file hash) and extracts it into the inactive slot.
Any refusal is a ``DeltaError`` whose text goes into the device's history, and the update
core falls back to the full bundle (docs/install-state-machine.md, "Deltas").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from device_agent import bundle_access as ba
from device_agent import faults
from device_agent.slots import Slots
from model_bundles import keys as mb_keys
from model_bundles.delta_apply import apply_delta, slot_opener
from model_bundles.delta_format import DeltaError
from ota.delta import DeltaRef
from ota.instructions import BundleRef

__all__ = ["rebuild_bundle"]


def rebuild_bundle(delta_file: Path, *, delta: DeltaRef, ref: BundleRef, slots: Slots,
                   fleet_key: Any, out: Path) -> str:
    """Write ``ref``'s bundle to ``out`` from ``delta_file``; returns the line for the
    device's history. ``DeltaError`` (or ``OSError``) when it cannot."""
    cur = slots.current()
    if cur is None or cur.sha256 != delta.base_sha256:
        held = f"{cur.bundle} ({cur.sha256[:16]})" if cur is not None else "no model"
        raise DeltaError(f"base missing: the delta starts from {delta.base_sha256[:16]}, "
                         f"this device serves {held}")
    trusted = [fleet_key]
    try:
        trusted.append(mb_keys.load_public_key(ref.publisher_public_key.encode()))
    except Exception:  # noqa: S110 - the fleet key alone then; the installer reports the key
        pass
    faults.raise_enospc_at("rebuild")
    header = apply_delta(delta_file, slot_opener(ba.files_dir(slots.path(cur.slot))), out,
                         trusted, base_sha256=delta.base_sha256, target_sha256=ref.sha256,
                         target_size=ref.size)
    d = header.delta
    return (f"delta: rebuilt {ref.name}@{ref.version} from {d.name}@{d.base_version} with a "
            f"{delta.size}-byte delta instead of the {ref.size}-byte bundle")
