"""Docs that cannot drift: every CLI subcommand is documented in the README, the README's
two set-up commands exist, and the docs the README links to are there."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SCRIPTS = {
    "model-bundle": "fleet_server.bundle_cli",
    "fleet-server": "fleet_server.cli",
    "device-agent": "device_agent.cli",
}


def _subcommands(module: str) -> list[str]:
    parser = importlib.import_module(module).build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert actions, f"{module} has no subcommands"
    return sorted(actions[0].choices)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_cli_subcommand_is_documented_in_the_readme(script: str) -> None:
    subcommands = _subcommands(SCRIPTS[script])
    assert len(subcommands) >= 3, subcommands
    missing = [s for s in subcommands if f"{script} {s}" not in README]
    assert missing == [], f"README does not document: {missing}"


def test_readme_set_up_commands_exist_and_are_executable() -> None:
    for command in ("./scripts/demo.sh", "./scripts/test.sh"):
        assert f"\n{command}\n" in README
        path = ROOT / command
        assert path.exists() and path.stat().st_mode & 0o111, command
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_readme_links_to_docs_that_exist() -> None:
    links = re.findall(r"\]\((docs/[^)]+)\)", README)
    assert links
    assert [link for link in links if not (ROOT / link).exists()] == []
