"""``model-bundle`` with ``publish``: model_bundles' own CLI plus an upload to the fleet server.

The publish command lives here because model_bundles is a leaf library (no network).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fleet_server.api_client import FleetApiError, FleetClient
from model_bundles.cli import PROG, build_parser_with_subparsers
from model_bundles.cli import main as bundle_main
from model_bundles.progress import Transfer, wanted


def add_publish_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("publish", help="upload a signed bundle to the fleet server")
    p.add_argument("file", type=Path, help="the .efb bundle")
    p.add_argument("--server", default=None, help="server URL (default $EDGEFLEET_SERVER)")
    p.add_argument("--token", default=None, help="admin token (default $EDGEFLEET_TOKEN)")
    p.add_argument("--json", action="store_true",
                   help="print the stored bundle as JSON (and no progress display)")
    p.set_defaults(func=cmd_publish)
    return p


def cmd_publish(args: argparse.Namespace) -> int:
    server = args.server or os.environ.get("EDGEFLEET_SERVER")
    token = args.token or os.environ.get("EDGEFLEET_TOKEN")
    if not server:
        return _usage("no server: pass --server URL or set EDGEFLEET_SERVER")
    if not server.startswith(("http://", "https://")):
        return _usage(f"bad server URL {server!r}: want http://HOST:PORT")
    if not token:
        return _usage("no admin token: pass --token TOKEN or set EDGEFLEET_TOKEN")
    if not args.file.is_file():  # reported by main as "PATH: No such file or directory"
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(args.file))
    with (Transfer(f"uploading {args.file.name}", enabled=wanted(args.json)) as progress,
          FleetClient(server, token) as client):
        row = client.upload_bundle(args.file, progress=progress)
    print(json.dumps(row, indent=2) if args.json else f"{row['id']} {row['ref']}")
    return 0


def _usage(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    """model_bundles' parser (keygen, build, inspect, verify) plus ``publish``."""
    parser, sub = build_parser_with_subparsers()
    add_publish_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """model_bundles' ``main`` (0 ok, 1 refused/failed, 2 usage) plus the upload's errors."""
    try:
        return bundle_main(argv, parser=build_parser())
    except FleetApiError as e:  # HTTP error or unreachable server, already one line
        print(f"{PROG}: error: publish failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
