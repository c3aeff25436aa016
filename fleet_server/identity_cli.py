"""``fleet-server users add|list|set-role|set-password|disable|enable`` and
``fleet-server tokens create|list|revoke``: a thin shell over ``FleetClient`` (admin)."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from fleet_server.api_client import FleetClient
from fleet_server.roles import ROLE_NAMES


class IdentityCliError(Exception):
    """A password that could not be read or does not match its confirmation (exit 1)."""


def add_parser(admin: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """``admin(name, help)`` makes a subcommand that takes --server/--token."""
    users = admin("users", "people who log in to the console (admin)")
    usub = users.add_subparsers(dest="users_command", required=True)
    tokens = admin("tokens", "scoped API tokens: a name, a role, an expiry (admin)")
    tsub = tokens.add_subparsers(dest="tokens_command", required=True)

    def sub(group: Any, name: str, help_text: str) -> argparse.ArgumentParser:
        q = group.add_parser(name, help=help_text)
        for flag in ("--server", "--token"):
            q.add_argument(flag, default=argparse.SUPPRESS)
        q.add_argument("--json", action="store_true")
        return q

    add = sub(usub, "add", "add a user; the password is read from stdin or prompted for")
    add.add_argument("username")
    add.add_argument("--role", required=True, choices=ROLE_NAMES)
    sub(usub, "list", "list users")
    set_role = sub(usub, "set-role", "change a user's role (applies to the next request)")
    set_role.add_argument("username")
    set_role.add_argument("role", choices=ROLE_NAMES)
    sub(usub, "set-password", "set a new password (stdin or prompt)").add_argument("username")
    sub(usub, "disable", "disable a user and end their sessions").add_argument("username")
    sub(usub, "enable", "enable a disabled user").add_argument("username")

    create = sub(tsub, "create", "mint a token: printed once, stored only as a hash")
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=ROLE_NAMES)
    create.add_argument("--expires-days", type=float, default=90.0,
                        help="lifetime in days (default 90, at most 366)")
    sub(tsub, "list", "list tokens (never their secrets)")
    sub(tsub, "revoke", "revoke a token now").add_argument("token_id")


def _read_password() -> str:
    if not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise IdentityCliError("the passwords do not match")
    if not password:
        raise IdentityCliError("no password given (one line on stdin, or at the prompt)")
    return password


def _when(ts: float | None) -> str:
    return "-" if not ts else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _user_line(u: dict[str, Any]) -> str:
    state = "disabled" if u["disabled"] else "enabled"
    return f"{u['username']}  {u['role']}  {state}  last login {_when(u['last_login_at'])}"


def _token_line(t: dict[str, Any]) -> str:
    state = "revoked" if t["revoked_at"] else ("expired" if t["expires_at"] <= time.time()
                                               else "live")
    return (f"{t['id']}  {t['name']}  {t['role']}  {state}  expires {_when(t['expires_at'])}  "
            f"last used {_when(t['last_used_at'])}")


def run(args: argparse.Namespace, client: FleetClient) -> int:
    data: Any
    if args.command == "users":
        cmd = args.users_command
        if cmd == "add":
            data = client.add_user(args.username, _read_password(), args.role)
        elif cmd == "list":
            data = client.list_users()
        elif cmd == "set-role":
            data = client.update_user(args.username, role=args.role)
        elif cmd == "set-password":
            data = client.update_user(args.username, password=_read_password())
        else:
            data = client.update_user(args.username, disabled=cmd == "disable")
        line: Callable[[dict[str, Any]], str] = _user_line
    else:
        cmd = args.tokens_command
        if cmd == "create":
            data = client.create_token(args.name, args.role, int(args.expires_days * 86400))
            if not args.json:
                print(data["token"])
                print(f"{_token_line(data)}  (shown once: store it now)", file=sys.stderr)
                return 0
        elif cmd == "list":
            data = client.list_tokens()
        else:
            data = client.revoke_token(args.token_id)
        line = _token_line
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    elif isinstance(data, list):
        print("\n".join(line(r) for r in data) or f"no {args.command}")
    else:
        print(line(data))
    return 0
