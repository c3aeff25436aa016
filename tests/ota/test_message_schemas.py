"""The JSON Schemas in docs/schemas/ are generated from the declarations: the committed files
must equal a fresh generation (one file per message, stable text, newline at the end), and
each limit a schema states is one the parser enforces."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from ota.errors import ProtocolError
from ota.messages import Telemetry
from ota.schemas import MESSAGES, message_schemas, render, stale_files, write_schemas

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_schemas", ROOT / "scripts/gen_schemas.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_schemas_equal_a_fresh_generation() -> None:
    gen = _generator()
    for sub, schemas in gen.all_schemas().items():
        assert stale_files(ROOT / "docs/schemas" / sub, schemas) == [], (
            f"docs/schemas/{sub} is stale: run python scripts/gen_schemas.py")


def test_every_message_has_one_stable_file_ending_in_a_newline(tmp_path: Path) -> None:
    schemas = message_schemas()
    assert write_schemas(tmp_path, schemas) == sorted(f"{n}.json" for n in MESSAGES)
    assert write_schemas(tmp_path, schemas) == []  # a second run changes nothing
    for name in MESSAGES:
        text = (tmp_path / f"{name}.json").read_text()
        assert text.endswith("}\n") and text == render(json.loads(text))


def test_check_names_an_edited_an_extra_and_a_missing_schema(tmp_path: Path) -> None:
    schemas = message_schemas()
    write_schemas(tmp_path, schemas)
    edited = json.loads((tmp_path / "Telemetry.json").read_text())
    edited["properties"]["seq"]["maximum"] = 2**64
    (tmp_path / "Telemetry.json").write_text(render(edited))
    (tmp_path / "Old.json").write_text("{}\n")
    (tmp_path / "Event.json").unlink()
    assert stale_files(tmp_path, schemas) == ["Event.json", "Old.json", "Telemetry.json"]
    assert write_schemas(tmp_path, schemas) == ["Event.json", "Old.json", "Telemetry.json"]
    assert stale_files(tmp_path, schemas) == [] and not (tmp_path / "Old.json").exists()


def test_the_generator_check_fails_on_a_stale_folder(tmp_path: Path) -> None:
    gen = _generator()
    assert gen.main(["--check", "--out", str(tmp_path)]) == 1
    assert gen.main(["--out", str(tmp_path)]) == 0
    assert gen.main(["--check", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in (tmp_path / "rest").glob("*.json"))  # REST bodies too


def test_message_schemas_carry_protocol_1_and_the_declared_limits() -> None:
    tel = message_schemas()["Telemetry"]
    assert tel["required"][0] == "protocol" and tel["properties"]["protocol"]["const"] == 1
    seq = tel["properties"]["seq"]
    assert (seq["type"], seq["minimum"], seq["maximum"]) == ("integer", 0, 2**63 - 1)
    assert tel["properties"]["device_id"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
    ack = message_schemas()["ReportAck"]["properties"]["seqs"]
    assert (ack["minItems"], ack["maxItems"]) == (1, 1024)


@pytest.mark.parametrize(("seq", "ok"), [(0, True), (2**63 - 1, True), (2**63, False),
                                         (-1, False)])
def test_the_schema_bounds_of_seq_are_the_parser_bounds(seq: int, ok: bool) -> None:
    sample = Telemetry("dev-1", 1, 1.0, 10.0, None, None, 0, 0, 0, 0)
    obj = json.loads(sample.to_bytes())
    obj["seq"] = seq
    bounds = message_schemas()["Telemetry"]["properties"]["seq"]
    assert (bounds["minimum"] <= seq <= bounds["maximum"]) is ok
    if ok:
        assert Telemetry.from_bytes(json.dumps(obj).encode()).seq == seq
    else:
        with pytest.raises(ProtocolError, match="seq must be"):
            Telemetry.from_bytes(json.dumps(obj).encode())


def test_the_protocol_doc_links_every_message_to_its_schema() -> None:
    doc = (ROOT / "docs/mqtt-protocol.md").read_text()
    for name in MESSAGES:
        link = f"(schemas/mqtt/{name}.json)"
        assert link in doc, f"docs/mqtt-protocol.md does not link {link}"
        assert (ROOT / "docs/schemas/mqtt" / f"{name}.json").is_file()
