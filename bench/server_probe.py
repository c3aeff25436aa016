"""Run ``fleet-server`` with a probe the scale benchmarks read from outside the process.

    python -m bench.server_probe PROBE.json serve --data DIR ...

Everything after the probe file is ``fleet-server``'s own command line. Once a second the
probe writes ``PROBE.json`` (atomically): the server's threads (``native_id`` -> name, so
the bench can read each thread's CPU from ``/proc/PID/task/TID/stat``) and, per thread
name, the seconds spent inside registry transactions (``Database.transaction``, outermost
only: the statements and the commit) and how many there were.

``BENCH_SERVER`` in the environment turns this change's two speed-ups off, for a baseline in
the same benchmark run: ``before``: the rollout driver polls every ``--rollout-tick`` only
(``fleet_server.rollouts.driver.REACT_S = 0``) and the ingest worker commits every write on
its own (no ``batch_transaction``); ``batched``: only the driver polls; ``after`` (default):
the server as it is. Bench-only: the server's code is not changed by the probe otherwise.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fleet_server import db as fleet_db
from fleet_server.cli import main as fleet_main
from fleet_server.mqtt_bridge import MqttBridge
from fleet_server.rollouts import driver as rollout_driver

DB_SECONDS: Counter[str] = Counter()
DB_CALLS: Counter[str] = Counter()


def _timed_transactions() -> None:
    original = fleet_db.Database.transaction

    @contextmanager
    def transaction(self: fleet_db.Database) -> Iterator[Any]:
        if getattr(self._local, "conn", None) is not None:  # nested: joins the outer one
            with original(self) as conn:
                yield conn
            return
        t0 = time.perf_counter()
        try:
            with original(self) as conn:
                yield conn
        finally:
            name = threading.current_thread().name
            DB_SECONDS[name] += time.perf_counter() - t0
            DB_CALLS[name] += 1

    fleet_db.Database.transaction = transaction  # type: ignore[method-assign]


def _writer(path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    while True:
        snap = {"pid": os.getpid(),
                "threads": {str(t.native_id): t.name for t in threading.enumerate()},
                "db_s": dict(DB_SECONDS), "db_calls": dict(DB_CALLS)}
        tmp.write_text(json.dumps(snap))
        os.replace(tmp, path)
        time.sleep(1.0)


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    _timed_transactions()
    mode = os.environ.get("BENCH_SERVER", "after")
    if mode in ("before", "batched"):
        rollout_driver.REACT_S = 0.0
    if mode == "before":
        MqttBridge._batch_transaction = None  # type: ignore[assignment,method-assign]
    threading.Thread(target=_writer, args=(Path(sys.argv[1]),), name="bench-probe",
                     daemon=True).start()
    return fleet_main(sys.argv[2:])


if __name__ == "__main__":
    raise SystemExit(main())
