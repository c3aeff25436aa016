"""``fleet-server trust ...``: create the TUF repository, rotate root keys, show it.

Runs on the data directory directly (no server needed); root keys are read from and
written to directories the operator names, so they can live on offline media.
"""

from __future__ import annotations

import argparse
import getpass
from pathlib import Path
from typing import Any

from fleet_server import tuf_repo
from fleet_server.audit import AuditLog
from fleet_server.datadir import REGISTRY


def add_parser(sub: Any) -> None:
    trust = sub.add_parser("trust", help="TUF root of trust: init, rotate-root, show")
    trust_sub = trust.add_subparsers(dest="trust_command", required=True)

    init = trust_sub.add_parser("init", help="create DATA/trust with new offline root keys")
    init.add_argument("--data", required=True, type=Path, help="server data directory")
    init.add_argument("--root-keys", required=True, type=Path,
                      help="directory to write the root keys to (move it offline)")
    init.add_argument("--threshold", type=int, default=1, help="root signatures required")
    init.add_argument("--count", type=int, default=None,
                      help="root keys to create (default: the threshold)")
    init.add_argument("--db", default=None, metavar="URL",
                      help="the server's registry database when not DATA/registry.db "
                           "(serve --db): the change goes into its audit log")

    rot = trust_sub.add_parser("rotate-root", help="sign a new root version with new keys")
    rot.add_argument("--data", required=True, type=Path)
    rot.add_argument("--root-keys", required=True, type=Path,
                     help="directory holding (a threshold of) the current root keys")
    rot.add_argument("--new-root-keys", required=True, type=Path,
                     help="directory to write the new root keys to")
    rot.add_argument("--threshold", type=int, default=1)
    rot.add_argument("--count", type=int, default=None)
    rot.add_argument("--db", default=None, metavar="URL",
                     help="the server's registry database when not DATA/registry.db")

    show = trust_sub.add_parser("show", help="root version, keys, thresholds, expiry")
    show.add_argument("--data", required=True, type=Path)


def _audit(data: Path, action: str, detail: dict[str, Any], db: str | None = None) -> None:
    """Trust changes run offline, on the data directory: recorded in its audit log (the
    registry's, ``--db`` when the server runs on another database) as the local user who ran
    them (client ``local``)."""
    log = AuditLog(db or data / REGISTRY)
    try:
        log.record(actor=f"local:{getpass.getuser()}", action=action, subject="trust/root",
                   detail=detail, client="local")
    finally:
        log.close()


def run(args: argparse.Namespace) -> int:
    if args.trust_command == "init":
        count = args.count or args.threshold
        ids = tuf_repo.init_repo(args.data, args.root_keys, threshold=args.threshold,
                                 count=count)
        print(f"TUF repository created in {args.data / tuf_repo.TRUST_DIR}")
        print(f"root keys ({args.threshold} of {count} sign a new root) in {args.root_keys}:")
        for kid in ids:
            print(f"  {kid}")
        print("move that directory offline; the server keeps only the online keys")
        _audit(args.data, "trust.init", {"threshold": args.threshold, "root_key_ids": ids},
               args.db)
        return 0
    if args.trust_command == "rotate-root":
        old = tuf_repo.load_signers(args.root_keys)
        version = tuf_repo.rotate_root(args.data, old, new_keys_dir=args.new_root_keys,
                                       threshold=args.threshold,
                                       count=args.count or args.threshold)
        print(f"root v{version} written; new root keys in {args.new_root_keys}")
        _audit(args.data, "trust.rotate_root", {"version": version,
                                                 "threshold": args.threshold}, args.db)
        return 0
    repo = tuf_repo.TufRepo(args.data)
    root = repo.root().signed
    print(f"root v{root.version}, expires {root.expires.isoformat()}")
    for name, role in root.roles.items():
        print(f"  {name}: threshold {role.threshold} of {', '.join(k[:16] for k in role.keyids)}")
    return 0
