"""The JSON Schema of every message of protocol 1, from the declarations themselves.

``scripts/gen_schemas.py`` writes them to ``docs/schemas/mqtt/<Message>.json`` (and the
fleet server's REST bodies to ``docs/schemas/rest/``); ``tests/ota/test_message_schemas.py``
fails when a committed file and the code disagree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from ota.acks import ReportAck
from ota.chunks import ChunkHeader
from ota.instructions import Instruction, InstructionEnvelope
from ota.limits import PROTOCOL_VERSION
from ota.messages import ChunkRequest, DeviceState, Event, ShadowReport, Telemetry
from ota.signed_report import ReportEnvelope

MESSAGES: dict[str, tuple[type, bool]] = {
    "DeviceState": (DeviceState, True),
    "Telemetry": (Telemetry, True),
    "Event": (Event, True),
    "ChunkRequest": (ChunkRequest, True),
    "ShadowReport": (ShadowReport, True),
    "ReportAck": (ReportAck, True),
    "ReportEnvelope": (ReportEnvelope, True),
    "InstructionEnvelope": (InstructionEnvelope, False),
    "Instruction": (Instruction, True),
    "ChunkHeader": (ChunkHeader, False),
}
"""Each message by name, and whether its JSON carries ``"protocol": 1``."""


def message_schema(cls: type, *, has_protocol: bool) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) a receiver validates ``cls`` against."""
    out = msgspec.json.schema(cls)
    defs = out.pop("$defs", {})
    name = out["$ref"].rsplit("/", 1)[-1]
    schema: dict[str, Any] = defs.pop(name)
    if defs:
        schema["$defs"] = defs
    if has_protocol:
        schema["properties"] = {"protocol": {"const": PROTOCOL_VERSION, "type": "integer"},
                                **schema["properties"]}
        schema["required"] = ["protocol", *schema.get("required", [])]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def message_schemas() -> dict[str, dict[str, Any]]:
    return {name: message_schema(cls, has_protocol=proto)
            for name, (cls, proto) in MESSAGES.items()}


def render(schema: dict[str, Any]) -> str:
    """Stable text: sorted keys, two-space indent, a newline at the end."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def stale_files(folder: Path, schemas: dict[str, dict[str, Any]]) -> list[str]:
    """Names of files under ``folder`` that differ from ``schemas`` (or are extra/missing)."""
    want = {f"{name}.json": render(s) for name, s in schemas.items()}
    have = {p.name: p.read_text(encoding="utf-8") for p in folder.glob("*.json")}
    return sorted(n for n in want.keys() | have.keys() if want.get(n) != have.get(n))


def write_schemas(folder: Path, schemas: dict[str, dict[str, Any]]) -> list[str]:
    """Write one file per schema (removing stale ones); the names of files that changed."""
    changed = stale_files(folder, schemas) if folder.exists() else sorted(
        f"{n}.json" for n in schemas)
    folder.mkdir(parents=True, exist_ok=True)
    for name in changed:
        path = folder / name
        if name.removesuffix(".json") in schemas:
            path.write_text(render(schemas[name.removesuffix(".json")]), encoding="utf-8")
        else:
            path.unlink()
    return changed
