"""Fault injection for tests only: SIGKILL at a named point, fake ENOSPC, fake free space.

Read from environment variables that production never sets; with none set every hook is a
no-op (one dict lookup). The crash-safety and fault tests start real ``device-agent run``
processes with them (docs/install-state-machine.md, "Fault injection").

- ``EDGEFLEET_TEST_KILL_AT=<point>``: the agent SIGKILLs itself when it reaches ``point``:
  ``state:<install state>`` (right after that state was persisted), ``chunk:<n>`` (after
  the n-th chunk of a transfer was written and recorded), ``switch`` (right after
  ``current.json`` was replaced).
- ``EDGEFLEET_TEST_CRASH_ON_LOAD=<name>[@<version>][:segv]``: the agent dies whenever it
  loads that bundle (a model that crashes the runtime natively): SIGKILL, or with
  ``:segv`` a real segmentation fault (a read of address 0 through ``ctypes``).
- ``EDGEFLEET_TEST_ENOSPC_AT=stage``: extraction into a slot fails with ``ENOSPC``.
- ``EDGEFLEET_TEST_FREE_BYTES=<n>``: the disk space check sees ``n`` free bytes.
- ``EDGEFLEET_TEST_CHUNK_DELAY_S=<s>``: the agent sleeps ``s`` seconds after writing each
  chunk (a slow link, so a test can act in the middle of a transfer).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import time
from pathlib import Path

__all__ = ["KILL_ENV", "crash_on_load", "free_bytes", "chunk_delay", "kill_point",
           "raise_enospc_at"]

KILL_ENV = "EDGEFLEET_TEST_KILL_AT"
CRASH_ON_LOAD_ENV = "EDGEFLEET_TEST_CRASH_ON_LOAD"
ENOSPC_ENV = "EDGEFLEET_TEST_ENOSPC_AT"
FREE_BYTES_ENV = "EDGEFLEET_TEST_FREE_BYTES"
CHUNK_DELAY_ENV = "EDGEFLEET_TEST_CHUNK_DELAY_S"


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_point(point: str) -> None:
    """SIGKILL this process if the test asked to die at ``point``."""
    if os.environ.get(KILL_ENV) == point:
        _die()


def crash_on_load(name: str, version: str | None = None) -> None:
    """Die if the test declared this bundle (``name`` or ``name@version``) a crashing model."""
    spec = os.environ.get(CRASH_ON_LOAD_ENV)
    if not spec:
        return
    target, _, how = spec.partition(":")
    if target not in (name, f"{name}@{version}"):
        return
    if how == "segv":
        import ctypes

        ctypes.string_at(0)  # SIGSEGV, as a native runtime crash would
    _die()


def raise_enospc_at(point: str) -> None:
    if os.environ.get(ENOSPC_ENV) == point:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + " (injected)")


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem holding ``path`` (or the injected figure)."""
    fake = os.environ.get(FREE_BYTES_ENV)
    if fake is not None:
        return int(fake)
    return shutil.disk_usage(path).free


def chunk_delay() -> None:
    """Sleep after a chunk was written if the test asked for a slow transfer."""
    delay = os.environ.get(CHUNK_DELAY_ENV)
    if delay:
        time.sleep(float(delay))
