"""A real nginx caching reverse proxy in front of a fleet server, for the test's lifetime.

The config is the one docs/operations.md shows ("A CDN or cache in front of bundle
downloads"), with the paths in a temporary directory and the cache status in a header and
in the access log."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx

CONF = """daemon off;
{user}
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format cached '$request_uri $status $upstream_cache_status';
    access_log {tmp}/access.log cached;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy_temp;
    fastcgi_temp_path {tmp}/fastcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    proxy_cache_path {tmp}/cache levels=1:2 keys_zone=bundles:10m max_size=1g inactive=7d
                     use_temp_path=off;
    server {{
        listen 127.0.0.1:{port};
        location /api/v1/bundles/by-hash/ {{
            proxy_pass {upstream};
            proxy_cache bundles;
            proxy_cache_lock on;
            proxy_no_cache $http_authorization;
            proxy_cache_bypass $http_authorization;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
        location / {{
            proxy_pass {upstream};
            proxy_set_header Host $host:$server_port;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NginxCache:
    """``nginx -c conf`` as a child process (not a daemon); ``stop()`` ends it."""

    def __init__(self, binary: str, tmp: Path, upstream: str) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = tmp / "nginx.conf"
        # as root, workers would otherwise run as nobody and could not write the temp dir
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(CONF.format(tmp=tmp, port=self.port, upstream=upstream, user=user))
        self.proc = subprocess.Popen([binary, "-p", str(tmp), "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(self.url + "/api/v1/health", timeout=2)
                return
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    stderr = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise RuntimeError(f"nginx did not start: {stderr} {self.errors()}") from None
                time.sleep(0.1)

    def errors(self) -> str:
        log = self.tmp / "error.log"
        return log.read_text() if log.exists() else ""

    def access_log(self) -> list[tuple[str, int, str]]:
        """``(uri, status, cache status)`` of every request so far (``-`` when not cached)."""
        path = self.tmp / "access.log"
        rows = []
        for line in path.read_text().splitlines() if path.exists() else []:
            uri, status, cache = line.split(" ")
            rows.append((uri, int(status), cache))
        return rows

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
