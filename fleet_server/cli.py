"""``fleet-server``: a thin shell over ``serve`` and ``FleetClient``; errors -> clean messages."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fleet_server import ca_cli, db_cli, identity_cli, rollout_cli, trust_cli
from fleet_server.api_client import FleetApiError, FleetClient
from fleet_server.config import ServerSettings, SettingsError
from fleet_server.errors import FleetError
from fleet_server.telemetry_limits import LimitsError, TelemetryLimits


class CliError(Exception):
    """A usage problem reported as one line and exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet-server", description="edgefleet fleet server")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server (REST API, console, MQTT broker)")
    serve.add_argument("--data", required=True, type=Path, help="data directory")
    serve.add_argument("--db", default=None, metavar="URL",
                       help="registry database, postgresql://USER[:PASS]@HOST:PORT/NAME "
                            "(default: DATA/registry.db, SQLite)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080, help="HTTP port (0 = pick a free one)")
    serve.add_argument("--mqtt-port", type=int, default=1883,
                       help="embedded broker port (0 = pick a free one)")
    serve.add_argument("--broker", default=None,
                       help="external broker mqtt://[user:pass@]host:port instead of embedded")
    serve.add_argument("--rollout-tick", type=float, default=5.0, metavar="SECONDS",
                       help="how often the rollout driver evaluates gates (default 5)")
    serve.add_argument("--telemetry-limit", action="append", default=[], metavar="KEY=VALUE",
                       help="a per-device report rate, queue or retention bound "
                            "(docs/operations.md), e.g. rate_msgs=10; repeatable")
    serve.add_argument("--session-idle", type=int, default=30 * 60, metavar="SECONDS",
                       help="console session ends after this long idle (default 1800)")
    serve.add_argument("--session-max", type=int, default=12 * 3600, metavar="SECONDS",
                       help="console session's absolute lifetime (default 43200)")
    serve.add_argument("--behind-tls-proxy", action="store_true",
                       help="a TLS proxy fronts the server: Secure console cookie, https origins")
    serve.add_argument("--public-bundle-urls", action="store_true",
                       help="serve bundle bytes at public content-addressed URLs a CDN can "
                            "cache (docs/security.md)")
    serve.add_argument("--bundle-base-url", default=None, metavar="URL",
                       help="with --public-bundle-urls: the CDN origin devices fetch from")
    serve.add_argument("--tls-hostname", action="append", default=[], metavar="NAME",
                       help="a DNS name or IP devices reach the server by, added to its "
                            "certificate (repeatable)")
    serve.add_argument("--insecure", action="store_true",
                       help="plain HTTP and MQTT with passwords, no TLS (trusted test "
                            "networks only; docs/security.md)")
    serve.add_argument("--replica-id", default=None, metavar="NAME",
                       help="run as replica NAME of several sharing --db postgresql://... and "
                            "--broker (MQTT v5 shared subscriptions; docs/scaling.md)")
    serve.add_argument("--lease-ttl", type=float, default=6.0, metavar="SECONDS",
                       help="the leader lease's lifetime (default 6; failover within "
                            "TTL + renew interval)")
    serve.add_argument("--lease-renew", type=float, default=2.0, metavar="SECONDS",
                       help="how often the lease is renewed or tried for (default 2)")

    mosq = sub.add_parser("mosquitto-config", help="write a TLS Mosquitto configuration "
                          "for this fleet (CA, certificate, key, ACL)")
    mosq.add_argument("--data", required=True, type=Path, help="the server's data directory")
    mosq.add_argument("--out", required=True, type=Path, help="directory to write")
    mosq.add_argument("--port", type=int, default=8883, help="listener port (default 8883)")
    mosq.add_argument("--host", default="0.0.0.0", help="listener address (default 0.0.0.0)")  # noqa: S104 - the broker's bind address
    mosq.add_argument("--hostname", action="append", default=[], metavar="NAME",
                      help="a name devices reach the broker by, added to its certificate")
    mosq.add_argument("--replica", action="append", default=[], metavar="NAME",
                      help="a server replica's --replica-id, given broker access as "
                           "edgefleet-server.NAME (repeatable)")

    demo = sub.add_parser("demo", help="run the main job on embedded defaults (server, "
                          "broker, console, one local agent, a sample bundle deployed)")
    demo.add_argument("--data", type=Path, default=Path("demo-data"),
                      help="demo data directory (default ./demo-data)")
    demo.add_argument("--port", type=int, default=8080, help="HTTP port (busy -> a free one)")
    demo.add_argument("--api-port", type=int, default=8765,
                      help="the agent's local inference API port (busy -> a free one)")
    demo.add_argument("--exit-when-ready", action="store_true",
                      help="stop everything once the device serves the bundle (for scripts)")
    demo.add_argument("--insecure", action="store_true",
                      help="plain HTTP and MQTT instead of TLS (docs/security.md)")

    def admin(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--server", default=None, help="server URL (default $EDGEFLEET_SERVER)")
        p.add_argument("--token", default=None, help="admin token (default $EDGEFLEET_TOKEN)")
        p.add_argument("--cacert", default=None, type=Path,
                       help="fleet CA bundle to verify an https server with (default "
                            "$EDGEFLEET_CA, else the system's CAs)")
        return p

    pubs = admin("publishers", "list or add publisher keys")
    pubs.add_argument("--json", action="store_true")
    pubs_sub = pubs.add_subparsers(dest="publishers_command")
    add = pubs_sub.add_parser("add", help="register a publisher public key")
    add.add_argument("pub", type=Path, help="publisher.pub (PEM)")
    add.add_argument("--name", default="")
    for flag in ("--server", "--token"):
        add.add_argument(flag, default=argparse.SUPPRESS)

    token = admin("enrol-token", "create a one-time device enrolment token")
    token.add_argument("--group", default="default")
    token.add_argument("--ttl", type=int, default=86400, help="seconds (default 86400)")
    token.add_argument("--json", action="store_true")

    deploy = admin("deploy", "deploy NAME@VERSION to a device or a group")
    deploy.add_argument("bundle", help="NAME@VERSION (or a bundle sha256)")
    target = deploy.add_mutually_exclusive_group(required=True)
    target.add_argument("--device")
    target.add_argument("--group")
    deploy.add_argument("--delegate", help="operator override: preferred delegate (e.g. cuda)")
    deploy.add_argument("--variant", help="operator override: preferred bundle variant id")
    deploy.add_argument("--json", action="store_true")

    cancel = admin("cancel", "cancel a deployment on every device that has not finished it")
    cancel.add_argument("deployment_id", metavar="DEPLOYMENT_ID")
    cancel.add_argument("--json", action="store_true")

    trust_cli.add_parser(sub)
    db_cli.add_parser(sub)
    rollout_cli.add_parser(admin)
    identity_cli.add_parser(admin)
    ca_cli.add_parser(sub)

    for name in ("devices", "bundles", "deployments"):
        listing = admin(name, f"list {name}")
        listing.add_argument("--json", action="store_true")
        if name == "devices":
            _device_filter_flags(listing)
            ca_cli.add_revoke(listing)
    return parser


def _device_filter_flags(parser: argparse.ArgumentParser) -> None:
    """``fleet-server devices`` filters: the same as GET /api/v1/devices (docs/rest-api.md)."""
    parser.add_argument("--search", "-q", dest="q", help="device id contains this text")
    parser.add_argument("--group")
    parser.add_argument("--status", choices=("online", "offline", "never"))
    parser.add_argument("--bundle", help="active bundle name")
    parser.add_argument("--version", dest="bundle_version", help="active bundle version")
    parser.add_argument("--delegate", help="active delegate, e.g. CPUExecutionProvider")
    parser.add_argument("--trouble",
                        choices=("any", "failed", "rolled_back", "fallback", "drift"))
    parser.add_argument("--sort", default="id",
                        help="id, last_seen, errors or latency (prefix - to reverse)")
    parser.add_argument("--page", type=int, default=1)
    parser.add_argument("--per-page", type=int, default=None, help="rows per page (1-1000)")


def _client(args: argparse.Namespace) -> FleetClient:
    server = args.server or os.environ.get("EDGEFLEET_SERVER")
    token = args.token or os.environ.get("EDGEFLEET_TOKEN")
    if not server:
        raise CliError("no server: pass --server URL or set EDGEFLEET_SERVER")
    if not server.startswith(("http://", "https://")):
        raise CliError(f"bad server URL {server!r}: want http://HOST:PORT")
    if not token:
        raise CliError("no admin token: pass --token TOKEN or set EDGEFLEET_TOKEN")
    cacert = getattr(args, "cacert", None) or os.environ.get("EDGEFLEET_CA")
    if cacert and not Path(cacert).is_file():
        raise CliError(f"CA bundle {cacert} does not exist (--cacert or EDGEFLEET_CA)")
    return FleetClient(server, token, ca_bundle=Path(cacert) if cacert else None)


def format_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Plain aligned text: ``columns`` is [(header, key)]."""
    cells = [[h for h, _ in columns]] + [
        ["-" if r.get(k) is None else str(r.get(k)) for _, k in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def _emit(data: Any, as_json: bool, columns: Sequence[tuple[str, str]]) -> None:
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
    elif isinstance(data, list):
        print(format_table(data, columns))
    else:
        print(format_table([data], columns))


def _device_rows(devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for d in devices:
        t = d.get("telemetry") or {}
        lat = (d.get("window") or {}).get("latency_ms") or {}  # merged over 15 minutes
        out.append({**d, "status": "online" if d["online"] else "offline",
                    "inferences": t.get("total_inferences"), "p95": lat.get("p95")})
    return out


def _deployment_rows(deps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**d, "target_s": f"{d['target']['kind']}:{d['target']['value']}",
             "states": " ".join(f"{t['device_id']}={t['state']}" for t in d["targets"])}
            for d in deps]


def _run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        from fleet_server.serve import serve

        serve(ServerSettings(data_dir=args.data, host=args.host, port=args.port,
                             mqtt_port=args.mqtt_port, broker_url=args.broker,
                             rollout_tick_s=args.rollout_tick,
                             telemetry=TelemetryLimits.parse(args.telemetry_limit),
                             behind_tls_proxy=args.behind_tls_proxy,
                             public_bundle_urls=args.public_bundle_urls,
                             bundle_base_url=args.bundle_base_url,
                             session_idle_s=args.session_idle,
                             session_ttl_s=args.session_max,
                             insecure=args.insecure,
                             tls_hostnames=tuple(args.tls_hostname), db_url=args.db,
                             replica_id=args.replica_id, lease_ttl_s=args.lease_ttl,
                             lease_renew_s=args.lease_renew))
        return 0
    if args.command == "mosquitto-config":
        from fleet_server.mosquitto_config import write_fleet_config

        files = write_fleet_config(data_dir=args.data, out=args.out, port=args.port,
                                   host=args.host, hostnames=tuple(args.hostname),
                                   replicas=tuple(args.replica))
        print(f"wrote {files.conf}, {files.acl_file}, {files.ca_file}, {files.cert_file}, "
              f"{files.key_file}" + (f", {files.dynsec_file}" if files.dynsec_file.exists()
                                     else " (no dynamic-security plugin found: a revoked "
                                          "device's open connection cannot be closed)"))
        print(f"run:   mosquitto -c {files.conf}")
        print(f"then:  fleet-server serve --data {args.data} --broker mqtts://HOST:{args.port}")
        return 0
    if args.command == "demo":
        from fleet_server.demo import run_demo

        return run_demo(args.data, port=args.port, api_port=args.api_port,
                        exit_when_ready=args.exit_when_ready, insecure=args.insecure)
    if args.command == "trust":
        return trust_cli.run(args)
    if args.command == "db":
        return db_cli.run(args)
    if args.command == "ca":
        return ca_cli.run_ca(args)
    with _client(args) as client:
        if args.command == "rollout":
            return rollout_cli.run(args, client)
        if args.command in ("users", "tokens"):
            return identity_cli.run(args, client)
        if args.command == "publishers":
            if args.publishers_command == "add":
                row = client.add_publisher(args.pub.read_text(encoding="utf-8"), args.name)
                print(f"publisher {row['name']} {row['key_id']}")
                return 0
            _emit(client.list_publishers(), args.json, [("NAME", "name"), ("KEY ID", "key_id")])
        elif args.command == "enrol-token":
            row = client.create_enrolment_token(args.group, args.ttl)
            print(json.dumps(row, indent=2) if args.json else row["token"])
        elif args.command == "deploy":
            row = client.deploy(args.bundle, device_id=args.device, group=args.group,
                                delegate=args.delegate, variant=args.variant)
            _emit(_deployment_rows([row])[0], args.json,
                  [("ID", "id"), ("BUNDLE", "bundle"), ("TARGET", "target_s"),
                   ("DEVICES", "states")])
        elif args.command == "cancel":
            row = client.cancel_deployment(args.deployment_id)
            _emit(_deployment_rows([row])[0], args.json,
                  [("ID", "id"), ("BUNDLE", "bundle"), ("TARGET", "target_s"),
                   ("DEVICES", "states")])
        elif args.command == "devices" and getattr(args, "devices_command", None) == "revoke":
            return ca_cli.run_revoke(args, client)
        elif args.command == "devices":
            devices = client.list_devices(
                q=args.q, group=args.group, status=args.status, bundle=args.bundle,
                version=args.bundle_version, delegate=args.delegate, trouble=args.trouble,
                sort=args.sort, page=args.page, per_page=args.per_page)
            _emit(devices if args.json else _device_rows(devices), args.json,
                  [("DEVICE", "id"), ("GROUP", "group"), ("STATUS", "status"),
                   ("BUNDLE", "active_bundle"), ("DELEGATE", "delegate"),
                   ("INFERENCES", "inferences"), ("P95 MS (15 MIN)", "p95")])
        elif args.command == "bundles":
            _emit(client.list_bundles(), args.json,
                  [("REF", "ref"), ("SIZE", "size"), ("ID", "id"), ("SIGNER", "publisher_key_id")])
        elif args.command == "deployments":
            deps = client.list_deployments()
            _emit(deps if args.json else _deployment_rows(deps), args.json,
                  [("ID", "id"), ("BUNDLE", "bundle"), ("TARGET", "target_s"),
                   ("DEVICES", "states")])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 ok, 1 error or refused (by the server or the library), 2 usage.

    Every error the commands raise is mapped here to one line on stderr, never a traceback.
    """
    args = build_parser().parse_args(argv)  # usage errors: argparse exits 2
    try:
        return _run(args)
    except (CliError, SettingsError, LimitsError) as e:  # a bad option value (--broker, --port ...)
        return _fail(str(e), 2)
    except (FleetApiError, FleetError, rollout_cli.RolloutCliError,
            identity_cli.IdentityCliError) as e:
        return _fail(str(e), 1)
    except OSError as e:  # a file named on the command line: "PATH: No such file or directory"
        return _fail(f"{e.filename}: {e.strerror}" if e.filename else str(e), 1)
    except KeyboardInterrupt:
        return 130


def _fail(message: str, status: int) -> int:
    print(f"fleet-server: {' '.join(message.split())}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
