"""The JSON Schema of every REST body the fleet server's API declares.

Taken from the app's own OpenAPI document (every request body and response model of a
route, and the error bodies), each made standalone: the models it refers to go under
``$defs``. ``scripts/gen_schemas.py`` writes them to ``docs/schemas/rest/<Model>.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

from fleet_server.app import create_app
from fleet_server.config import ServerSettings

_OPENAPI_REF = "#/components/schemas/"


def openapi_components() -> dict[str, dict[str, Any]]:
    """``components.schemas`` of the API (the app is built in a throw-away data dir)."""
    quiet = io.StringIO()
    with (tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(quiet),
          contextlib.redirect_stderr(quiet)):
        app = create_app(ServerSettings(data_dir=Path(tmp)))
        components: dict[str, dict[str, Any]] = app.openapi()["components"]["schemas"]
    return components


def _refs(schema: Any) -> set[str]:
    text = json.dumps(schema)
    return {part.split('"', 1)[0] for part in text.split(f'"$ref": "{_OPENAPI_REF}')[1:]}


def standalone(name: str, components: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Component ``name`` with every component it refers to under ``$defs``."""
    needed: set[str] = set()
    todo = _refs(components[name])
    while todo:
        ref = todo.pop()
        if ref not in needed and ref != name:
            needed.add(ref)
            todo |= _refs(components[ref])
    schema = {**components[name], "$schema": "https://json-schema.org/draft/2020-12/schema"}
    if needed:
        schema["$defs"] = {ref: components[ref] for ref in sorted(needed)}
    text = json.dumps(schema).replace(f'"$ref": "{_OPENAPI_REF}', '"$ref": "#/$defs/')
    return json.loads(text)


def rest_schemas() -> dict[str, dict[str, Any]]:
    components = openapi_components()
    return {name: standalone(name, components) for name in sorted(components)}
