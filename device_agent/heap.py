"""The C heap of ``device-agent run``: fewer malloc arenas, and freed memory handed back to
the operating system once traffic stops (glibc only; a no-op on other C libraries).

The local API serves each connection on a thread of its own, and glibc gives threads that
allocate at the same time arenas of their own (up to eight per core), each keeping what
its threads freed. Freed memory inside an arena goes back to the system only from the top
of the heap, and only past a threshold that glibc raises after large blocks are freed. So
after a burst of requests (or an install) the agent keeps megabytes it no longer uses.
``limit_arenas`` caps the arenas at two before any thread starts; ``IdleTrim`` calls
``malloc_trim(0)`` (tens of microseconds) once, when the agent has gone quiet after
activity. Figures: bench/README.md, "Agent RSS".
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Hashable
from functools import cache

__all__ = ["ARENA_MAX", "IdleTrim", "limit_arenas", "trim"]

M_ARENA_MAX = -8
"""``mallopt`` parameter number in glibc's ``malloc.h``."""
ARENA_MAX = 2
"""Arenas for the agent's threads: the main heap and one more."""


@cache
def _glibc() -> ctypes.CDLL | None:
    """This process's C library when it is glibc (which has ``malloc_trim``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    except (OSError, AttributeError):  # musl and others: no gnu_get_libc_version
        return None
    return libc


def limit_arenas(arenas: int = ARENA_MAX) -> bool:
    """Cap glibc's malloc arenas; call it before the process starts threads. True when set."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas))


def trim() -> bool:
    """``malloc_trim(0)``: free pages of every arena back to the system. True when glibc
    released memory."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))


class IdleTrim:
    """Trim once the agent goes quiet. ``poll()`` every second or so: it trims when
    ``activity()`` (any value that changes when the agent works: predicts served, the
    install journal) has not moved since the previous poll but has since the last trim.
    The first quiet poll after start trims too (start-up and the model load)."""

    def __init__(self, activity: Callable[[], Hashable]) -> None:
        self._activity = activity
        self._last: Hashable = object()  # equal to nothing: the first poll is not quiet
        self._trimmed: Hashable = object()
        self.trims = 0

    def poll(self) -> bool:
        """True when this poll trimmed."""
        now = self._activity()
        quiet, self._last = now == self._last, now
        if not quiet or now == self._trimmed:
            return False
        self._trimmed = now
        self.trims += 1
        trim()
        return True
