"""Write the JSON Schema of every MQTT message and REST body into docs/schemas/.

    python scripts/gen_schemas.py          # (re)generate docs/schemas/{mqtt,rest,local}/*.json
    python scripts/gen_schemas.py --check  # exit 1 and name the files that are stale

The MQTT messages come from ``ota.schemas``, the fleet server's REST bodies from its
routes (``fleet_server.api.schema_export``), the device's local API bodies from
``device_agent.local_schemas``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from device_agent.local_schemas import local_schemas
from fleet_server.api.schema_export import rest_schemas
from ota.schemas import message_schemas, stale_files, write_schemas

DOCS = Path(__file__).resolve().parent.parent / "docs" / "schemas"


def all_schemas() -> dict[str, dict[str, dict[str, Any]]]:
    """Sub-folder of docs/schemas -> schemas by name."""
    return {"mqtt": message_schemas(), "rest": rest_schemas(), "local": local_schemas()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report stale files")
    ap.add_argument("--out", type=Path, default=DOCS, help="folder (default docs/schemas)")
    args = ap.parse_args(argv)
    stale: list[str] = []
    for sub, schemas in all_schemas().items():
        folder = args.out / sub
        if args.check:
            names = stale_files(folder, schemas) if folder.exists() else sorted(schemas)
        else:
            names = write_schemas(folder, schemas)
        stale += [f"{sub}/{n}" for n in names]
    verb = "stale (run python scripts/gen_schemas.py)" if args.check else "written"
    for name in stale:
        print(f"{verb}: {name}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
