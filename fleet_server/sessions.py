"""Console sessions (server-side, in memory: a restart logs everyone out) and the login
rate limiter.

A session ends when it has been idle for ``idle_s`` or has lived ``max_s`` (both set in
``ServerSettings``: ``session_idle_s`` and ``session_ttl_s``), at logout (the entry is
deleted, so the old cookie is refused), or when its user is disabled. Each holds the
per-session CSRF token every console form posts back.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from fleet_server.users import Principal


@dataclass
class Session:
    session_id: str
    csrf: str
    principal: Principal
    created_at: float
    last_seen: float


@dataclass
class ConsoleSessions:
    max_s: float
    idle_s: float
    clock: Callable[[], float] = time.time
    _sessions: dict[str, Session] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def create(self, principal: Principal) -> Session:
        now = self.clock()
        session = Session(session_id=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(24),
                          principal=principal, created_at=now, last_seen=now)
        with self._lock:
            self._sessions[session.session_id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session (its idle clock restarts), None if unknown or expired."""
        if not session_id:
            return None
        now = self.clock()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if now - session.created_at >= self.max_s or now - session.last_seen >= self.idle_s:
                del self._sessions[session_id]
                return None
            session.last_seen = now
            return session

    def csrf_for(self, session_id: str | None) -> str | None:
        session = self.get(session_id)
        return session.csrf if session is not None else None

    def drop(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(session_id, None)

    def drop_user(self, username: str) -> int:
        """End every session of ``username`` (disabled, or its role changed); returns how many."""
        with self._lock:
            ids = [k for k, s in self._sessions.items()
                   if s.principal.kind == "user" and s.principal.name == username]
            for k in ids:
                del self._sessions[k]
        return len(ids)


MAX_KEY = 64
"""User names are at most 64 characters: a longer one is counted under its first 64."""
MAX_KEYS = 10_000
"""Past this many addresses and names, windows that have passed are forgotten."""


@dataclass
class LoginLimiter:
    """Sliding-window limits on login attempts: every attempt counts against the client
    address, failed ones against the username. ``retry_after`` says how long to wait."""

    per_address: int
    per_user: int
    window_s: float
    clock: Callable[[], float] = time.time
    _hits: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _wait(self, key: str, limit: int, now: float) -> float:
        hits = self._hits.get(key)
        if hits is None:
            return 0.0
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        if not hits:
            del self._hits[key]
            return 0.0
        return hits[0] + self.window_s - now if len(hits) >= limit else 0.0

    def retry_after(self, *, address: str, username: str) -> int:
        """Seconds to wait before trying again (0: go ahead)."""
        now = self.clock()
        with self._lock:
            wait = max(self._wait(f"a:{address}", self.per_address, now),
                       self._wait(f"u:{username[:MAX_KEY]}", self.per_user, now)
                       if username else 0.0)
        return math.ceil(wait) if wait > 0 else 0

    def attempt(self, *, address: str) -> None:
        self._hit(f"a:{address}")

    def failed(self, *, username: str) -> None:
        if username:
            self._hit(f"u:{username[:MAX_KEY]}")

    def _hit(self, key: str) -> None:
        now = self.clock()
        with self._lock:
            if len(self._hits) >= MAX_KEYS:  # forget windows that have passed
                for k in [k for k, h in self._hits.items() if h[-1] <= now - self.window_s]:
                    del self._hits[k]
            self._hits.setdefault(key, deque()).append(now)
