"""Running under systemd: the unit ``device-agent install --systemd`` writes, readiness
and watchdog notifications (``sd_notify``, pure stdlib), and the agent's health test.

The notification protocol is one datagram per message to the ``AF_UNIX`` socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket); without the variable every
call is a no-op, so ``device-agent run`` behaves the same outside systemd. The watchdog is
on when ``$WATCHDOG_USEC`` is set (and ``$WATCHDOG_PID``, if set, is this process); the
agent then sends ``WATCHDOG=1`` every half period, and only while ``healthy`` says so,
so a hung agent is restarted by systemd (``Restart=on-failure``).
"""

from __future__ import annotations

import http.client
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from device_agent.errors import AgentError

__all__ = ["SERVICE_USER", "api_answers", "feed_watchdog", "notify", "unit_text",
           "watchdog_interval"]

log = logging.getLogger(__name__)
SERVICE_USER = "edgefleet"
"""The unprivileged user (and group) the unit runs the agent as; docs/operations.md says
how to create it."""
WATCHDOG_SEC = 30
HOME_DIRS = ("/home", "/root", "/run/user")
_UNSAFE = set('"\\\n\r\t') | {chr(c) for c in range(32)}


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (``READY=1``, ``WATCHDOG=1``, ...) to systemd; False when not under
    a notifying systemd or the socket refuses (logged, never raised)."""
    addr = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not addr:
        return False
    if addr[0] == "@":  # abstract namespace
        addr = "\0" + addr[1:]
    elif addr[0] != "/":
        log.warning("NOTIFY_SOCKET %r is neither a path nor an abstract socket", addr)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
    except OSError as e:
        log.warning("sd_notify %s failed: %s", message.split("\n")[0], e)
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` messages (half the period systemd set), or None when
    this process has no watchdog."""
    env = os.environ if env is None else env
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


def feed_watchdog(done: threading.Event, healthy: Callable[[], bool]) -> None:
    """The main loop of ``device-agent run``: until ``done``, every watchdog interval send
    ``WATCHDOG=1`` if ``healthy()`` (no watchdog: just wait for ``done``)."""
    interval = watchdog_interval()
    if interval is None:
        done.wait()
        return
    while not done.wait(interval):
        if healthy():
            notify("WATCHDOG=1")
        else:
            log.warning("agent unhealthy: not feeding the systemd watchdog")


def api_answers(url: str, timeout_s: float = 2.0) -> bool:
    """True when the local API at ``url`` answers ``GET /v1/health`` with 200."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port,
                                      timeout=timeout_s)
    try:
        conn.request("GET", "/v1/health")
        resp = conn.getresponse()
        resp.read()
        return resp.status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _quoted(path: Path) -> str:
    s = str(path)
    bad = sorted(_UNSAFE & set(s))
    if bad:
        raise AgentError(f"cannot write a systemd unit for {s!r}: the path holds "
                         f"{', '.join(map(repr, bad))}")
    return '"' + s.replace("%", "%%") + '"'


def unit_text(agent_dir: Path, python: str | Path, *, user: str = SERVICE_USER) -> str:
    """The hardened service unit for an agent in ``agent_dir`` run by ``python``."""
    d = Path(agent_dir).resolve()
    exe = Path(python)
    in_home = any(p == h or p.startswith(h + "/") for p in (str(d), str(exe))
                  for h in HOME_DIRS)
    exec_start = f"{_quoted(exe)} -m device_agent run --dir {_quoted(d)}".replace("$", "$$")
    return f"""[Unit]
Description=edgefleet device agent
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
WatchdogSec={WATCHDOG_SEC}
TimeoutStartSec=300
Restart=on-failure
RestartSec=5
User={user}
Group={user}
UMask=0077
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={_quoted(d)}
PrivateTmp=yes
ProtectHome={"read-only" if in_home else "yes"}
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6

[Install]
WantedBy=multi-user.target
"""
