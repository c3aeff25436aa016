"""Running the server: in the foreground (CLI) or in a background thread (tests, demos)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import TextIO

import uvicorn

from fleet_server.app import create_app
from fleet_server.config import ServerSettings
from fleet_server.errors import FleetError
from fleet_server.services import FleetServices


class ServerStartError(FleetError):
    """The server could not bind its ports or start."""


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the HTTP socket ourselves so ``port=0`` yields a known free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServerStartError(f"cannot bind HTTP port {host}:{port}: {e}") from e
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)


@dataclasses.dataclass
class _Started:
    services: FleetServices | None = None
    http_url: str = ""
    mqtt_url: str = ""


def _prepare(settings: ServerSettings) -> tuple[uvicorn.Server, socket.socket, _Started]:
    sock = bind_socket(settings.host, settings.port)
    port = sock.getsockname()[1]
    settings = dataclasses.replace(settings, port=port)
    started = _Started(http_url=f"http://{_url_host(settings.host)}:{port}")

    def on_started(services: FleetServices) -> None:
        started.services = services
        started.mqtt_url = services.mqtt_url_for(None)
        services.data_dir.write_ports(http_port=port, mqtt_port=services.mqtt_port or 0,
                                      http_url=started.http_url, mqtt_url=started.mqtt_url)

    app = create_app(settings, on_started=on_started)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    return uvicorn.Server(config), sock, started


class RunningServer:
    """A server running in a background thread; a context manager."""

    def __init__(self, settings: ServerSettings, *, timeout_s: float = 30.0) -> None:
        self._server, self._sock, self._started = _prepare(settings)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fleet-server", daemon=True)
        self._thread.start()
        deadline = timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or deadline <= 0:
                self.stop()
                raise ServerStartError(f"fleet server did not start: {self._error}")
            self._thread.join(0.05)
            deadline -= 0.05
        assert self._started.services is not None
        self.services = self._started.services

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as e:  # reported by the constructor
            self._error = e

    @property
    def http_url(self) -> str:
        return self._started.http_url

    @property
    def mqtt_url(self) -> str:
        return self._started.mqtt_url

    @property
    def admin_token(self) -> str:
        return self.services.data_dir.admin_token

    @property
    def data_dir(self) -> Path:
        return self.services.data_dir.root

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(15)
        self._sock.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def start_server(settings: ServerSettings) -> RunningServer:
    """Start a server in a background thread and wait until HTTP and MQTT are bound."""
    return RunningServer(settings)


def serve(settings: ServerSettings, *, out: TextIO = sys.stdout) -> None:
    """Run in the foreground until interrupted (``fleet-server serve``)."""
    server, sock, started = _prepare(settings)
    services = server.config.app.state.services
    original = server.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await original(sockets=sockets)
        print(f"console:  {started.http_url}/console/", file=out)
        print(f"REST API: {started.http_url}/api/v1 (docs at {started.http_url}/docs)", file=out)
        print(f"MQTT:     {started.mqtt_url}", file=out)
        print(f"ports:    {services.data_dir.ports_path}", file=out)
        if services.data_dir.first_start:
            print(f"admin token (shown once, also in {services.data_dir.root}/admin.token):",
                  file=out)
            print(f"  {services.data_dir.admin_token}", file=out)
        out.flush()

    server.startup = startup  # type: ignore[method-assign]
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
