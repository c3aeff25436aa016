"""The operator's delegate override, persisted so it survives restarts.

The fleet sends it in the signed instruction (``Instruction.delegate_override``); every
instruction that carries a bundle sets it (or clears it when absent). It is kept in
``DIR/state/delegate_override.json`` (atomic write) and passed to ``ModelRuntime.load``
at install and at start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from device_agent.persist import atomic_write_json, read_json
from device_agent.variant_selection import Override

__all__ = ["load_override", "override_path", "save_override"]


def override_path(agent_dir: Path) -> Path:
    return Path(agent_dir) / "state" / "delegate_override.json"


def _as_override(obj: Any) -> Override | None:
    if obj is None:
        return None
    variant, delegate = getattr(obj, "variant", None), getattr(obj, "delegate", None)
    if isinstance(obj, dict):
        variant, delegate = obj.get("variant"), obj.get("delegate")
    return Override(variant=variant, delegate=delegate) if (variant or delegate) else None


def load_override(agent_dir: Path) -> Override | None:
    """The persisted override; a missing or unreadable file means none."""
    try:
        return _as_override(read_json(override_path(agent_dir)))
    except (OSError, ValueError, TypeError):
        return None


def save_override(agent_dir: Path, override: Any) -> bool:
    """Persist ``override`` (an ``ota.instructions.DelegateOverride``, a dict, an
    ``Override`` or None); True when it differs from what was stored."""
    new = _as_override(override)
    if new == load_override(agent_dir):
        return False
    body = None if new is None else {"variant": new.variant, "delegate": new.delegate}
    atomic_write_json(override_path(agent_dir), body)
    return True
