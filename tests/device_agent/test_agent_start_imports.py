"""A serving agent does not load what only updates and enrolment need (issue 11, agent
RSS): python-tuf and httpx (with urllib3, click and rich) are imported when metadata is
first checked or a bundle fetched, not when ``device_agent.agent`` is imported; and a
runtime that loads an ONNX bundle does not import LiteRT (~8 MiB) to probe it. Nor does the
agent load pydantic at all (docs/adr/0006-msgspec-protocol-models.md: its protocol models are
msgspec Structs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import write_slot

LAZY = ("tuf", "httpx", "urllib3", "rich", "click", "pydantic", "pydantic_core", "tarfile",
        "numpy.ma", "statistics")


def test_importing_the_agent_loads_no_update_only_library() -> None:
    code = ("import json, sys, device_agent.agent, device_agent.cli; "
            f"print(json.dumps([m for m in {LAZY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_loading_an_onnx_bundle_with_litert_preferred_never_imports_litert_or_tarfile(
        tmp_path: Path, sample_onnx: Path) -> None:
    write_slot(tmp_path / "slot", sample_onnx)
    code = ("import json, sys; from device_agent.runtime import ModelRuntime; "
            f"rt = ModelRuntime.load({str(tmp_path / 'slot')!r}, ['litert', 'cpu'], gate=True); "
            "print(json.dumps([rt.delegate, list(rt.attempts), "
            "[m for m in sys.modules if m.startswith(('ai_edge_litert', 'tflite_runtime'))], "
            "[m for m in ('tarfile', 'numpy.ma', 'statistics') if m in sys.modules]]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    delegate, attempts, litert, unused = json.loads(out.stdout.strip().splitlines()[-1])
    assert delegate == "onnxruntime:CPUExecutionProvider"
    assert any(a.endswith("/litert: skipped (does not run onnx)") for a in attempts)
    assert litert == []
    # the slot's files are hashed without the .efb reader; the gate's timing without numpy.ma
    assert unused == []
