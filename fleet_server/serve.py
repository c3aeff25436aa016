"""Running the server: in the foreground (CLI) or in a background thread (tests, demos)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import TextIO

import uvicorn

from fleet_server.app import create_app
from fleet_server.config import ServerSettings
from fleet_server.datadir import PORTS
from fleet_server.errors import FleetError
from fleet_server.services import FleetServices
from fleet_server.tls import INSECURE_WARNING, track_listener


class ServerStartError(FleetError):
    """The server could not bind its ports or start."""


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the HTTP socket ourselves so ``port=0`` yields a known free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto
    # says TCP; without it a response's headers and body, written apart, meet Nagle and the
    # client's delayed ACK and every request waits ~40 ms (docs/scaling.md, bench/enrol.py).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
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
    return "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)  # noqa: S104 - a comparison, not a bind


@dataclasses.dataclass
class _Started:
    services: FleetServices | None = None
    http_url: str = ""
    mqtt_url: str = ""


def _recorded_ports(data_dir: Path) -> dict[str, int]:
    """``http_port``/``mqtt_port`` from the last start's ``ports.json`` ({} if none)."""
    try:
        data = json.loads((data_dir / PORTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k in ("http_port", "mqtt_port")
            if isinstance(v := data.get(k), int) and 0 < v <= 65535}


def _port_is_free(host: str, port: int) -> bool:
    try:
        bind_socket(host, port).close()
    except ServerStartError:
        return False
    return True


def _bind_http(settings: ServerSettings, recorded: dict[str, int]) -> socket.socket:
    """Bind the HTTP port; ``--port 0`` first tries the port of the last start."""
    if settings.port == 0 and "http_port" in recorded:
        try:
            return bind_socket(settings.host, recorded["http_port"])
        except ServerStartError:
            pass
    return bind_socket(settings.host, settings.port)


def _mqtt_port(settings: ServerSettings, recorded: dict[str, int]) -> int:
    """``--mqtt-port 0`` reuses the broker port of the last start when it is still free, so
    enrolled agents (whose config holds that URL) reconnect after a restart."""
    if settings.mqtt_port != 0 or settings.broker_url or "mqtt_port" not in recorded:
        return settings.mqtt_port
    port = recorded["mqtt_port"]
    return port if _port_is_free(settings.host, port) else 0


def _prepare(settings: ServerSettings) -> tuple[uvicorn.Server, socket.socket, _Started]:
    recorded = _recorded_ports(settings.data_dir)
    settings = dataclasses.replace(settings, mqtt_port=_mqtt_port(settings, recorded))
    sock = _bind_http(settings, recorded)
    port = sock.getsockname()[1]
    settings = dataclasses.replace(settings, port=port)
    scheme = "http" if settings.insecure else "https"
    started = _Started(http_url=f"{scheme}://{_url_host(settings.host)}:{port}")

    def on_started(services: FleetServices) -> None:
        started.services = services
        started.mqtt_url = services.mqtt_url_for(None)
        services.data_dir.write_ports(http_port=port, mqtt_port=services.mqtt_port or 0,
                                      http_url=started.http_url, mqtt_url=started.mqtt_url)

    app = create_app(settings, on_started=on_started)
    tls = app.state.services.tls
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False,
                            **(tls.uvicorn_options() if tls is not None else {}))
    if tls is not None:  # loaded now (not at serve) so its HTTPS context is kept current
        config.load()
        if config.ssl is not None:
            track_listener(config.ssl, tls.cert)
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
        if self._started.services is None:
            raise ServerStartError("fleet server started without its services")
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
    def ca_bundle(self) -> Path | None:
        """The fleet CA bundle clients pin (None with ``--insecure``)."""
        tls = self.services.tls
        return None if tls is None else Path(tls.ca_bundle)

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
    # config.app is the FastAPI app _prepare built (uvicorn types it as any ASGI app)
    services = server.config.app.state.services  # type: ignore[union-attr]
    original = server.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await original(sockets=sockets)
        if services.tls is None:
            print(INSECURE_WARNING, file=out)
        print(f"console:  {started.http_url}/console/", file=out)
        print(f"REST API: {started.http_url}/api/v1 (docs at {started.http_url}/docs)", file=out)
        print(f"MQTT:     {started.mqtt_url}", file=out)
        if services.settings.replica_id is not None:
            print(f"replica:  {services.settings.replica_id} (leader lease: TTL "
                  f"{services.settings.lease_ttl_s:g} s, renewed every "
                  f"{services.settings.lease_renew_s:g} s)", file=out)
        if services.replica_warning:
            print(f"WARNING: {services.replica_warning}", file=out)
        if services.tls is not None:
            print(f"fleet CA: {services.tls.ca_bundle} (clients pin it: curl --cacert, "
                  "EDGEFLEET_CA)", file=out)
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
