"""A serving agent does not load what only updates and enrolment need (issue 11, agent
RSS): python-tuf and httpx (with urllib3, click and rich) are imported when metadata is
first checked or a bundle fetched, not when ``device_agent.agent`` is imported."""

from __future__ import annotations

import json
import subprocess
import sys

LAZY = ("tuf", "httpx", "urllib3", "rich", "click")


def test_importing_the_agent_loads_no_update_only_library() -> None:
    code = ("import json, sys, device_agent.agent, device_agent.cli; "
            f"print(json.dumps([m for m in {LAZY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
