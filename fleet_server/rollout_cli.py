"""``fleet-server rollout create|list|show|pause|resume|abort|promote``: a thin shell over
``FleetClient``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleet_server.api_client import FleetClient

ACTIONS = ("pause", "resume", "abort", "promote")


class RolloutCliError(Exception):
    """A plan file that is not JSON (exit status 1)."""


def add_parser(admin: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """``admin(name, help)`` makes a subcommand that takes --server/--token."""
    p = admin("rollout", "gated staged rollouts")
    rsub = p.add_subparsers(dest="rollout_command", required=True)

    def sub(name: str, help_text: str) -> argparse.ArgumentParser:
        q = rsub.add_parser(name, help=help_text)
        for flag in ("--server", "--token"):
            q.add_argument(flag, default=argparse.SUPPRESS)
        q.add_argument("--json", action="store_true")
        return q

    create = sub("create", "roll NAME@VERSION out to a group or devices, stage by stage")
    create.add_argument("bundle", help="NAME@VERSION (or a bundle sha256)")
    target = create.add_mutually_exclusive_group(required=True)
    target.add_argument("--group")
    target.add_argument("--devices", help="comma-separated device ids")
    create.add_argument("--plan", type=Path, default=None,
                        help="plan JSON file (default: shadow 5%% -> 5%% -> 25%% -> 100%%)")
    sub("list", "list rollouts")
    show = sub("show", "a rollout with its gates, devices and decisions")
    show.add_argument("rollout_id")
    for action in ACTIONS:
        sub(action, f"{action} a rollout").add_argument("rollout_id")


def _line(r: dict[str, Any]) -> str:
    return (f"{r['id']}  {r['bundle']}  {r['target']['kind']}:{r['target']['value'][:40]}  "
            f"{r['state']}  stage {r['stage_index'] + 1}/{len(r['plan']['stages'])} "
            f"({r['stage']})")


def _show(r: dict[str, Any]) -> str:
    lines = [_line(r)]
    ev = r.get("last_evaluation") or {}
    if ev:
        lines.append(f"last evaluation: {ev.get('outcome')} at {ev.get('stage')}: "
                     f"{ev.get('reason')}")
        for g in ev.get("gates", []):
            mark = {True: "ok", False: "FAIL", None: "-"}[g["ok"]]
            lines.append(f"  {g['name']:<22} {g['measured']!s:<22} {g['op']} "
                         f"{g['threshold']!s:<8} {mark}")
    for d in r.get("decisions", []):
        lines.append(f"decision: {d['action']} ({d['stage']}) by {d['actor']}: {d['reason']}")
    return "\n".join(lines)


def run(args: argparse.Namespace, client: FleetClient) -> int:
    cmd = args.rollout_command
    if cmd == "create":
        plan = None
        if args.plan is not None:
            text = args.plan.read_text(encoding="utf-8")  # OSError: reported by the CLI
            try:
                plan = json.loads(text)
            except ValueError as e:
                raise RolloutCliError(f"plan {args.plan} is not JSON: {e}") from e
        devices = [d.strip() for d in args.devices.split(",") if d.strip()] \
            if args.devices else None
        data: Any = client.create_rollout(args.bundle, group=args.group, devices=devices,
                                          plan=plan)
    elif cmd == "list":
        data = client.list_rollouts()
    elif cmd == "show":
        data = client.get_rollout(args.rollout_id)
    else:
        data = client.rollout_action(args.rollout_id, cmd)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    elif isinstance(data, list):
        print("\n".join(_line(r) for r in data) or "no rollouts")
    else:
        print(_show(data) if cmd == "show" else _line(data))
    return 0
