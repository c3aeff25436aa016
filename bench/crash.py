"""Crash-safety benchmark: ``python -m bench.crash --kills 500``.

Starts a real fleet server (embedded broker) and one ``device-agent run``, deploys
alternating versions of a six-chunk bundle and SIGKILLs the agent at random points
(download, verify, stage, switch, commit), checking after every kill that what the next
start serves is a complete slot matching a signed manifest, then that the device converges
within three restarts. Prints where the kills landed and the restarts needed.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import tempfile
import time
from pathlib import Path

from tests.faults.crash_helpers import CrashRig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.crash")
    ap.add_argument("--kills", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-delay", type=float, default=1.8,
                    help="longest delay (s) after start before a kill")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgefleet-crash-") as tmp:
        rig = CrashRig(Path(tmp))
        try:
            t0 = time.monotonic()
            rig.deploy(rig.versions[0])
            rig.restart_until_converged()
            rig.kill()
            seen = rig.random_kills(args.kills, random.Random(args.seed), args.max_delay)
            restarts = rig.restart_until_converged()
            final = rig.converged()
            elapsed = time.monotonic() - t0
        finally:
            rig.stop()
    by_state = collections.Counter(s.split(":")[0] for s in seen)
    print(f"kills: {len(seen)} in {elapsed:.0f} s; deployments: {rig.deployed}")
    print("journal state left by each kill: "
          + ", ".join(f"{k} {v}" for k, v in sorted(by_state.items())))
    print("served after each kill: every one a complete slot matching a signed manifest")
    print(f"converged after {restarts} restart(s): {final}")
    return 0 if final is not None else 1


if __name__ == "__main__":
    sys.exit(main())
