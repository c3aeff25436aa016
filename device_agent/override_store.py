"""The operator's delegate override, persisted so it survives restarts.

The fleet sends it in the signed instruction (``Instruction.delegate_override``); every
instruction that carries a bundle sets it (or clears it when absent). It is kept in the
device record (``DIR/state/device.json``, ``delegate_override``) and passed to
``ModelRuntime.load`` at install and at start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from device_agent.variant_selection import Override

__all__ = ["as_override", "load_override", "override_path", "save_override"]


def override_path(agent_dir: Path) -> Path:
    return Path(agent_dir) / "state" / "device.json"


def as_override(obj: Any) -> Override | None:
    """An ``Override`` from a record dict, a ``DelegateOverride`` or an ``Override``."""
    if obj is None:
        return None
    variant, delegate = getattr(obj, "variant", None), getattr(obj, "delegate", None)
    if isinstance(obj, dict):
        variant, delegate = obj.get("variant"), obj.get("delegate")
    return Override(variant=variant, delegate=delegate) if (variant or delegate) else None


def _as_dict(obj: Any) -> dict[str, str] | None:
    o = as_override(obj)
    if o is None:
        return None
    return {k: v for k, v in (("variant", o.variant), ("delegate", o.delegate)) if v}


def load_override(agent_dir: Path) -> Override | None:
    """The persisted override; none when the record holds none."""
    from device_agent.state_store import StateStore

    return as_override(StateStore(agent_dir).record.delegate_override)


def save_override(agent_dir: Path, override: Any) -> bool:
    """Persist ``override`` (an ``ota.instructions.DelegateOverride``, a dict, an
    ``Override`` or None); True when it differs from what was stored."""
    from device_agent.state_store import StateStore

    store = StateStore(agent_dir)
    new = _as_dict(override)
    if new == store.record.delegate_override:
        return False
    store.save(store.record.replace(delegate_override=new))
    return True
