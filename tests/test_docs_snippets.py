"""Every example in README.md and docs/*.md is checked against the real thing.

- command lines (fenced blocks and inline ``code`` spans naming a console script): the
  subcommand path and every ``--flag`` exist in that script's argparse parser;
  ``python -m bench.X --flag`` lines: the module exists and its ``--help`` lists the flags;
- the README's ``curl`` call runs, as written (only the port changes), against a real
  ``device-agent run`` serving the sample bundle that a real ``fleet-server serve`` deployed,
  and answers what the README shows;
- the README's Python API (``device_agent.Agent(dir).predict({...})``) is executed as written
  on that agent's directory;
- JSON blocks parse (``//`` comments stripped); the rollout plan example is a valid plan.

Blocks that are neither (a state diagram, Mosquitto's configuration) are listed by name so
that a new kind of example fails here until it gets a check.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.harness import Fleet, run_cli

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = {
    "model-bundle": "fleet_server.bundle_cli",
    "fleet-server": "fleet_server.cli",
    "device-agent": "device_agent.cli",
}
NOT_EXAMPLES = {  # blocks that are not commands, code or payloads: what they are
    ("install-state-machine.md", "instruction (signed"): "state diagram",
    ("operations.md", "listener 1883"): "mosquitto.conf excerpt (needs the site's password file)",
    ("operations.md", "user edgefleet-server"): "mosquitto ACL excerpt",
    # the variant that runs is written by tests/scale/nginx_cache.py (real nginx, proxy_cache)
    ("operations.md", "proxy_cache_path"): "nginx site configuration (needs TLS files)",
    ("operations.md", "# nginx: HTTPS proxy"): "nginx site configuration (needs a public name)",
    # metric names in these two are checked against a real agent's scrape by
    # tests/device_agent/test_agent_metrics.py
    ("metrics.md", "global:"): "Prometheus scrape configuration (needs a Prometheus)",
    ("metrics.md", "# p95 predict latency"): "PromQL queries (need a Prometheus)",
    # the server's: checked by tests/fleet_server/test_server_metrics.py
    ("metrics.md", "scrape_configs:"): "Prometheus scrape job (needs a Prometheus)",
    ("metrics.md", "# devices online"): "PromQL queries (need a Prometheus)",
    ("operations.md", "# /etc/systemd/system/edgefleet-crl.path"): "systemd units (need systemd)",
}


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    lang: str
    text: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}"


def _blocks() -> list[Block]:
    out = []
    for path in DOC_FILES:
        text = path.read_text()
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
            line = text.count("\n", 0, m.start()) + 1
            out.append(Block(path.name, line, m.group(1), m.group(2)))
    return out


BLOCKS = _blocks()


def _kind(block: Block) -> str:
    for (doc, start), _what in NOT_EXAMPLES.items():
        if block.doc == doc and block.text.lstrip().startswith(start):
            return "not-an-example"
    if block.lang == "json":
        return "json"
    first = block.text.split()[0]
    if first in SCRIPTS or first == "python":
        return "synopsis"
    if first.startswith("./scripts/"):
        return "script"
    if first == "curl":
        return "curl"
    return "unknown"


def _command_lines(text: str) -> list[str]:
    """Lines of a block, continuation lines (indented or after ``\\``) joined."""
    lines: list[str] = []
    for raw in text.splitlines():
        if lines and (raw.startswith((" ", "\t")) or lines[-1].endswith("\\")):
            lines[-1] = lines[-1].rstrip("\\") + " " + raw.strip()
        elif raw.strip():
            lines.append(raw.strip())
    return lines


def _inline_commands() -> list[tuple[str, str]]:
    """``code`` spans in prose that start with a console script: (doc, command)."""
    out = []
    for path in DOC_FILES:
        prose = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
        for span in re.findall(r"`([^`]+)`", prose):
            words = " ".join(span.split())
            if words.split(" ")[0] in SCRIPTS and " " in words:
                out.append((path.name, words))
    return out


# -- argparse checks --------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _check_command(command: str) -> None:
    """The subcommand path and each --flag of ``command`` exist in the real parser."""
    words = command.split(" #")[0].split()
    parser = importlib.import_module(SCRIPTS[words[0]]).build_parser()
    rest = words[1:]
    parsers = [parser]
    while rest and (subs := _subparsers(parsers[0])) and re.fullmatch(r"[a-z][a-z|-]*", rest[0]):
        names = rest[0].split("|")  # "show|pause|resume": each must exist
        unknown = [n for n in names if n not in subs]
        assert unknown == [], f"{command!r}: no subcommand {unknown} (have {sorted(subs)})"
        parsers = [subs[n] for n in names]
        rest = rest[1:]
    flags = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", " ".join(rest))
    for p in parsers:
        missing = [f for f in flags if f not in p._option_string_actions]
        assert missing == [], f"{command!r}: {p.prog} has no {missing}"


def _check_bench(command: str) -> None:
    words = command.split(" #")[0].split()
    assert words[:2] == ["python", "-m"], command
    module = words[2]
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{command!r}: no module {module}"
    flags = re.findall(r"(--[a-z][a-z0-9-]*)", " ".join(words[3:]))
    if flags:
        help_text = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT,
                                   capture_output=True, text=True, timeout=60, check=True).stdout
        assert [f for f in flags if f not in help_text] == [], command


def _synopsis_lines() -> list[Any]:
    return [pytest.param(str(b), line, id=f"{b}-{' '.join(line.split()[:3])}")
            for b in BLOCKS if _kind(b) == "synopsis" for line in _command_lines(b.text)]


def test_every_doc_block_is_an_example_this_file_checks() -> None:
    unknown = [str(b) for b in BLOCKS if _kind(b) == "unknown"]
    assert unknown == [], f"add a check for these blocks: {unknown}"
    assert {_kind(b) for b in BLOCKS} >= {"synopsis", "json", "curl", "script"}


@pytest.mark.parametrize(("where", "command"), _synopsis_lines())
def test_documented_command_line_exists_in_the_parser(where: str, command: str) -> None:
    if command.startswith("python "):
        _check_bench(command)
    else:
        _check_command(command)


@pytest.mark.parametrize(("doc", "command"), [
    pytest.param(doc, cmd, id=f"{doc}-{' '.join(cmd.split()[:3])}") for doc, cmd in _inline_commands()])
def test_command_quoted_in_prose_exists_in_the_parser(doc: str, command: str) -> None:
    _check_command(command)


def test_a_wrong_flag_or_subcommand_is_caught_by_the_check() -> None:
    with pytest.raises(AssertionError, match="--nope"):
        _check_command("fleet-server deploy NAME@VERSION --device ID --nope")
    with pytest.raises(AssertionError, match="no subcommand"):
        _check_command("fleet-server rollout list|frobnicate ID")


def test_set_up_scripts_exist_and_are_executable() -> None:
    scripts = [b.text.split()[0] for b in BLOCKS if _kind(b) == "script"]
    assert scripts
    for script in scripts:
        path = ROOT / script
        assert path.is_file() and path.stat().st_mode & 0o111, script


# -- JSON -------------------------------------------------------------------------------------


def _json(block: Block) -> Any:
    text = re.sub(r"\s//\s.*$", "", block.text, flags=re.M)
    return json.loads(text)


@pytest.mark.parametrize("block", [b for b in BLOCKS if _kind(b) == "json"], ids=str)
def test_json_example_parses(block: Block) -> None:
    doc = _json(block)
    assert isinstance(doc, dict) and doc


def test_rollout_plan_example_is_a_valid_plan() -> None:
    from fleet_server.rollouts.plan import Plan

    block, *more = [b for b in BLOCKS if b.doc == "rollouts.md" and _kind(b) == "json"]
    plan = Plan.from_dict(_json(block))
    for other in more:  # the later examples (sequential gates) are whole plans too
        Plan.from_dict(_json(other))
    assert [s.kind for s in plan.stages] == ["shadow", "canary", "canary", "canary"]
    assert plan.stages[-1].percent == 100


# -- against a real server and agent ----------------------------------------------------------


@pytest.fixture(scope="module")
def live_agent(tmp_path_factory: pytest.TempPathFactory,
               sample_onnx: Path) -> Iterator[tuple[Fleet, Path, dict[str, Any]]]:
    """fleet-server serve + device-agent run serving sample@1.0.0, all through the CLIs."""
    fleet = Fleet(tmp_path_factory.mktemp("docs-fleet"))
    try:
        bundle, pub = fleet.build_bundle(sample_onnx, "sample", "1.0.0")
        fleet.cli("fleet-server", "publishers", "add", str(pub))
        fleet.cli("model-bundle", "publish", str(bundle))
        _agent, agent_dir, api = fleet.start_agent("dev-docs")
        fleet.cli("fleet-server", "deploy", "sample@1.0.0", "--device", "dev-docs")
        fleet.wait_active("dev-docs", "sample@1.0.0")
        yield fleet, agent_dir, api
    finally:
        fleet.stop()


def _readme() -> str:
    return (ROOT / "README.md").read_text()


def _curl_block() -> Block:
    [block] = [b for b in BLOCKS if _kind(b) == "curl"]
    return block


def _expected(comment: str) -> Any:
    """The README's ``# {...}`` answer, ``[...]`` (elided numbers) read as null."""
    return json.loads(comment.lstrip("# ").replace("[...]", "null"))


def _matches(expected: Any, actual: Any) -> bool:
    if expected is None:
        return actual is not None
    if isinstance(expected, dict):
        return (isinstance(actual, dict) and expected.keys() == actual.keys()
                and all(_matches(v, actual[k]) for k, v in expected.items()))
    if expected == [None]:  # "[[...]]": a non-empty list of anything
        return isinstance(actual, list) and bool(actual)
    if isinstance(expected, list):
        return (isinstance(actual, list) and len(expected) == len(actual)
                and all(_matches(e, a) for e, a in zip(expected, actual, strict=True)))
    return bool(expected == actual)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_readme_curl_predict_answers_as_documented(live_agent) -> None:
    _fleet, _dir, api = live_agent
    lines = _command_lines(_curl_block().text)
    command, answer = lines[0], lines[1]
    assert "127.0.0.1:8765" in command  # the documented default port
    argv = shlex.split(command.replace("127.0.0.1:8765", f"127.0.0.1:{api['port']}"))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    got = json.loads(proc.stdout)
    assert _matches(_expected(answer), got), f"README shows {answer}, agent said {got}"
    assert np.asarray(got["outputs"]["scores"]).shape[0] == 1


def test_readme_python_api_runs_as_documented(live_agent) -> None:
    _fleet, agent_dir, api = live_agent
    call = re.search(r"`(device_agent\.Agent\(dir\)\.predict\(\{\.\.\.\}\))`", _readme())
    assert call, "README no longer shows device_agent.Agent(dir).predict({...})"
    curl_body = json.loads(re.search(r"-d '(\{.*\})'", _curl_block().text).group(1))
    code = call.group(1).replace("{...}", "inputs")

    import device_agent

    prediction = eval(code, {"device_agent": device_agent},  # noqa: S307 - the README's line
                      {"dir": agent_dir, "inputs": curl_body["inputs"]})
    http = run_cli("curl", "-s", "-X", "POST", f"http://127.0.0.1:{api['port']}/v1/predict",
                   "-H", "content-type: application/json", "-d", json.dumps(curl_body))
    served = json.loads(http.stdout)
    assert prediction.bundle == served["bundle"] == "sample@1.0.0"
    assert prediction.outputs["label"].tolist() == served["outputs"]["label"]
    np.testing.assert_allclose(prediction.outputs["scores"], served["outputs"]["scores"],
                               rtol=1e-5)


def test_python_api_export_is_the_agent_class() -> None:
    from device_agent import Agent
    from device_agent.agent import Agent as AgentClass

    assert Agent is AgentClass
