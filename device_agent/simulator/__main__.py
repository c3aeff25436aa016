"""``python -m device_agent.simulator``: run N simulated devices against a fleet server."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from device_agent.simulator.behaviour import Behaviour, BehaviourError
from device_agent.simulator.fleet import SimFleet, SimulatorError


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m device_agent.simulator",
                                description="many simulated devices speaking protocol 1")
    p.add_argument("--server", default=os.environ.get("EDGEFLEET_SERVER"))
    p.add_argument("--token", default=os.environ.get("EDGEFLEET_TOKEN"), help="admin token")
    p.add_argument("--cacert", type=Path, default=os.environ.get("EDGEFLEET_CA"),
                   help="fleet CA bundle of an https server (default $EDGEFLEET_CA)")
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--group", default="sim")
    p.add_argument("--prefix", default="sim")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between reports")
    p.add_argument("--inferences", type=int, default=50, help="inferences per report")
    p.add_argument("--behaviour", action="append", default=[],
                   help="NAME@VERSION:disagree=0.2,slow=3,error_rate=0.1,fail_install,fallback")
    p.add_argument("--connect-batch", type=int, default=0,
                   help="connect this many devices at a time (0 = all at once)")
    p.add_argument("--duration", type=float, default=0, help="seconds (0 = until Ctrl-C)")
    args = p.parse_args(argv)
    if not args.server or not args.token:
        print("simulator: give --server and --token (or EDGEFLEET_SERVER/TOKEN)",
              file=sys.stderr)
        return 2
    try:
        behaviours = dict(Behaviour.parse(s) for s in args.behaviour)
        fleet = SimFleet(server=args.server, admin_token=args.token, count=args.devices,
                         group=args.group, prefix=args.prefix, behaviours=behaviours,
                         report_interval_s=args.interval,
                         inferences_per_report=args.inferences,
                         ca_bundle=Path(args.cacert) if args.cacert else None).start(
                             connect_batch=args.connect_batch or None)
    except (BehaviourError, SimulatorError) as e:
        print(f"simulator: {e}", file=sys.stderr)
        return 1
    try:
        fleet.wait_connected()
        print(f"{args.devices} simulated devices connected", flush=True)
        end = time.monotonic() + args.duration if args.duration else None
        while end is None or time.monotonic() < end:
            time.sleep(5)
            print(dict(fleet.active_refs()), dict(fleet.stats), flush=True)
    except KeyboardInterrupt:
        pass
    except SimulatorError as e:
        print(f"simulator: {e}", file=sys.stderr)
        return 1
    finally:
        fleet.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
