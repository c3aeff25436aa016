"""``fleet-server ca show|rotate`` (on the data directory, like ``trust``) and
``fleet-server devices revoke ID`` (through the REST API, operator role)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from fleet_server.api_client import FleetClient
from fleet_server.ca import CA_DIR, DEFAULT_OVERLAP_S, CaError, FleetCA
from fleet_server.datadir import REGISTRY
from fleet_server.revocations import RevocationList


def add_parser(sub: Any) -> None:
    ca = sub.add_parser("ca", help="the fleet CA: show its hash, rotate it (data directory)")
    csub = ca.add_subparsers(dest="ca_command", required=True)
    show = csub.add_parser("show", help="print the CA hash enrolment tokens pin")
    show.add_argument("--data", required=True, type=Path, help="the server's data directory")
    show.add_argument("--json", action="store_true")
    rotate = csub.add_parser("rotate", help="make a new CA; the old one stays trusted for "
                             "the overlap, new certificates are signed by the new one")
    rotate.add_argument("--data", required=True, type=Path, help="the server's data directory")
    rotate.add_argument("--overlap-days", type=float, default=DEFAULT_OVERLAP_S / 86400,
                        help="how long the old CA stays trusted (default 14; devices renew "
                             "at 2/3 of 7 days, so at least 5)")
    rotate.add_argument("--db", metavar="URL", default=None,
                        help="the registry database the server uses with --db (default: the "
                             "data directory's SQLite registry): its revocations go in the "
                             "new CRL")


def add_revoke(devices: argparse.ArgumentParser) -> None:
    dsub = devices.add_subparsers(dest="devices_command")
    revoke = dsub.add_parser("revoke", help="cut a device off now (operator)")
    revoke.add_argument("device_id", metavar="ID")
    for flag in ("--server", "--token", "--cacert"):
        revoke.add_argument(flag, default=argparse.SUPPRESS)
    revoke.add_argument("--json", action="store_true", default=argparse.SUPPRESS)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return f"{dt.datetime.fromtimestamp(ts, dt.UTC):%Y-%m-%d %H:%M} UTC"


def run_ca(args: argparse.Namespace) -> int:
    if not (Path(args.data) / CA_DIR / "ca.crt").exists():  # a mistyped --data makes no CA
        raise CaError(f"{args.data} has no fleet CA ({CA_DIR}/ca.crt): the server makes it "
                      "at its first start; check --data")
    ca = FleetCA.load_or_create(args.data)
    if args.ca_command == "rotate":
        # the database first: one that cannot be used stops the command before the rotation
        revocations = RevocationList(args.db or Path(args.data) / REGISTRY)
        try:
            new = ca.rotate(overlap_s=args.overlap_days * 86400)
            revocations.write_crl(ca)  # one CRL per trusted CA
        finally:
            revocations.close()
        print(new)
        print(f"new CA {new}; the previous one stays trusted until "
              f"{_when(ca.overlap_until())}. Restart the server to serve the new chain; "
              "new enrolment tokens carry the new hash.")
        return 0
    trusted, until = ca.trusted_hashes(), ca.overlap_until()
    if args.json:
        print(json.dumps({"ca_hash": ca.ca_hash(), "trusted": trusted, "overlap_until": until,
                          "bundle": str(ca.trust_bundle_path()),
                          "crl": str(ca.crl_path())}, indent=2))
    else:
        print(ca.ca_hash())
        if until is not None:
            print(f"also trusted until {_when(until)}: {', '.join(trusted[1:])}")
    return 0


def run_revoke(args: argparse.Namespace, client: FleetClient) -> int:
    row = client.revoke_device(args.device_id)
    if getattr(args, "json", False):
        print(json.dumps(row, indent=2, sort_keys=True))
    else:
        state = "was already revoked" if row["already_revoked"] else "revoked"
        print(f"{row['device_id']} {state} ({_when(row['revoked_at'])} by {row['revoked_by']})"
              f"{'; disconnected from the broker' if row['disconnected'] else ''}")
        if row.get("broker_error"):
            print(f"warning: the broker was not told: {row['broker_error']}", file=sys.stderr)
    return 0
