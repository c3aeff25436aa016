"""``device-agent``: install | run | status | delegates. A thin shell over the library."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from device_agent.errors import AgentError

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="device-agent", description="edgefleet device agent")
    sub = ap.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("install", help="enrol this device with a fleet server")
    i.add_argument("--server", required=True)
    i.add_argument("--token", required=True,
                   help="one-time enrolment token; it ends in the fleet CA's hash "
                        "(.sha256:<hex>), which the server's CA must match")
    i.add_argument("--ca-hash", default=None, metavar="sha256:HEX",
                   help="the fleet CA's hash, for a token that does not carry it")
    i.add_argument("--device-id", required=True)
    i.add_argument("--dir", required=True, type=Path)
    i.add_argument("--systemd", action="store_true", help="also write a systemd unit")
    r = sub.add_parser("run", help="run the agent")
    r.add_argument("--dir", required=True, type=Path)
    r.add_argument("--api-port", type=int, default=None,
                   help="local inference API port (default from config, 8765; 0 = free port)")
    r.add_argument("--telemetry-interval", type=float, default=None, metavar="SECONDS",
                   help="telemetry reporting interval (default from config, 10 s)")
    s = sub.add_parser("status", help="show the device's state from local files")
    s.add_argument("--dir", required=True, type=Path)
    s.add_argument("--json", action="store_true")
    d = sub.add_parser("delegates", help="probe every delegate on this machine")
    d.add_argument("--json", action="store_true")
    return ap


def _status(agent_dir: Path) -> dict[str, Any]:
    from device_agent.config import AgentConfig
    from device_agent.persist import read_json
    from device_agent.slots import Slots
    from device_agent.state_store import StateStore

    cfg = AgentConfig.load(agent_dir)
    store = StateStore(agent_dir)
    cur = Slots(agent_dir).current()
    journal = store.load_journal()
    try:
        api = read_json(store.dir / "api.json")
    except (FileNotFoundError, ValueError):
        api = None
    return {
        "device_id": cfg.device_id,
        "server_url": cfg.server_url,
        "mqtt_url": cfg.mqtt_url,
        "active": None if cur is None else {"bundle": cur.bundle, "slot": cur.slot,
                                            "sha256": cur.sha256},
        "journal": {"state": journal.state.value, "instruction_seq": journal.instruction_seq,
                    "sha256": journal.sha256, "error": journal.error},
        "applied_seq": store.applied_seq,
        "api": api,
    }


def _run(agent_dir: Path, api_port: int | None, telemetry_interval: float | None) -> int:
    import dataclasses

    from device_agent import heap, systemd

    heap.limit_arenas()  # before the first thread (heap.py)
    from device_agent.agent import Agent
    from device_agent.config import AgentConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = AgentConfig.load(agent_dir)
    if telemetry_interval is not None:
        if telemetry_interval <= 0:
            raise AgentError("--telemetry-interval must be positive")
        config = dataclasses.replace(config, telemetry_interval_s=telemetry_interval)
    agent = Agent(agent_dir, config=config, api_port=api_port, heap_trim=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    agent.start()
    print(f"device-agent {agent.config.device_id}: local API on {agent.api.url}", flush=True)
    systemd.notify(f"READY=1\nSTATUS=serving on {agent.api.url}")
    systemd.feed_watchdog(done, agent.healthy)  # WATCHDOG=1 while healthy, until SIGTERM
    systemd.notify("STOPPING=1")
    agent.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 ok, 1 error or refused, 2 usage (argparse), 130 interrupted (Ctrl-C
    outside ``run``, which stops on SIGINT/SIGTERM and exits 0); errors are one line."""
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except AgentError as e:
        return _fail(str(e))
    except OSError as e:  # a file or directory named on the command line
        return _fail(f"{e.filename}: {e.strerror}" if e.filename else str(e))
    except KeyboardInterrupt:
        print("device-agent: interrupted", file=sys.stderr)
        return 130


def _fail(message: str) -> int:
    print(f"device-agent: {' '.join(message.split())}", file=sys.stderr)
    return 1


def _main(args: argparse.Namespace) -> int:
    if args.cmd == "install":
        from device_agent.enrol import enrol
        from device_agent.systemd import SERVICE_USER

        cfg = enrol(server=args.server, token=args.token, device_id=args.device_id,
                    agent_dir=args.dir, systemd=args.systemd, ca_hash=args.ca_hash)
        print(f"enrolled {cfg.device_id} with {cfg.server_url} (group {cfg.group or '-'})")
        if args.systemd:
            unit = args.dir / "edgefleet-agent.service"
            user = SERVICE_USER
            print(f"wrote {unit}; it runs the agent as user {user!r}. As root:\n"
                  f"  useradd --system --no-create-home --shell /usr/sbin/nologin {user}\n"
                  f"  chown -R {user}:{user} {args.dir.resolve()}\n"
                  f"  cp {unit} /etc/systemd/system/ && "
                  "systemctl enable --now edgefleet-agent")
        return 0
    if args.cmd == "run":
        return _run(args.dir, args.api_port, args.telemetry_interval)
    if args.cmd == "status":
        st = _status(args.dir)
        if args.json:
            print(json.dumps(st, indent=2))
        else:
            act = st["active"]
            print(f"device      {st['device_id']}\nserver      {st['server_url']}")
            print(f"active      {act['bundle'] + ' (slot ' + act['slot'] + ')' if act else '-'}")
            j = st["journal"]
            print(f"install     {j['state']} (instruction {j['instruction_seq']})"
                  + (f": {j['error']}" if j["error"] else ""))
            print(f"applied seq {st['applied_seq']}")
        return 0
    if args.cmd == "delegates":
        from delegates.registry import probe_all

        results = probe_all()
        if args.json:
            print(json.dumps([r.to_dict() for r in results], indent=2))
        else:
            for r in results:
                print(f"{r.name:10} {'yes' if r.available else 'no ':3}  {r.reason}")
        return 0
    raise AssertionError(f"unhandled command {args.cmd!r}")  # argparse knows every command
