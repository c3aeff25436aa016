"""The local inference API for apps on the device (``http.server``, loopback by default).

POST /v1/predict  JSON {"inputs": {name: nested list|scalar}} -> {"outputs", "bundle",
                  "delegate"}; or Content-Type application/x-npz (npz of named arrays),
                  answered as npz with X-Edgefleet-Bundle / X-Edgefleet-Delegate headers.
GET  /v1/health   {"status": "ok", "model": "name@version" | null}
GET  /v1/model    the active model's inputs/outputs spec (503 when none)
/v2/...           the Open Inference Protocol (KServe v2, with Triton's binary tensor data
                  extension): ``device_agent.oip`` and ``device_agent.oip_binary``
GET  /metrics     Prometheus metrics of the agent (``device_agent.metrics``)
Errors: 400 {"error"} for bad requests, 404 for an unknown path or OIP model/version, 413
over the body cap or an npz array over its size bound, 408 when the body does not arrive
within the read timeout, 503 with no active model or when ``max_connections`` connections
are already open. Inputs are decoded and cast by
``device_agent.predict_inputs``; the limits are documented in ``docs/local-api.md``.
"""

from __future__ import annotations

import email.utils
import io
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from device_agent import __version__, oip, oip_binary
from device_agent.errors import InputTooLargeError, PredictError
from device_agent.metrics import exposition as metrics_exposition
from device_agent.persist import atomic_write_json
from device_agent.predict_inputs import decode_json, decode_npz, input_bounds
from device_agent.runtime import ModelRuntime, Prediction
from device_agent.telemetry import TelemetryRecorder

__all__ = [
    "DEFAULT_MAX_BODY", "DEFAULT_MAX_CONNECTIONS", "DEFAULT_MAX_INPUT_BYTES",
    "DEFAULT_READ_TIMEOUT_S", "LocalApi",
]

log = logging.getLogger(__name__)
DEFAULT_MAX_BODY = 16 * 1024 * 1024
DEFAULT_MAX_INPUT_BYTES = 64 * 1024 * 1024
DEFAULT_READ_TIMEOUT_S = 10.0
DEFAULT_MAX_CONNECTIONS = 32
NPZ = "application/x-npz"


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The ``Date`` header value, formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return _date_cache[1]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

    def setup(self) -> None:
        # each recv of headers or body; socketserver declares timeout a class variable
        self.timeout = self.server.read_timeout_s  # type: ignore[misc]
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("local api: " + format, *args)

    def _send(self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
              ) -> None:
        """Status line, headers and body in one write (one segment for small answers)."""
        self.log_request(code)
        head = [f"{self.protocol_version} {code} {self.responses[code][0]}",
                f"Date: {_http_date()}", f"Content-Type: {ctype}",
                f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if self.close_connection:
            head.append("Connection: close")
        self.wfile.write("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body)

    def _json(self, code: int, obj: Any) -> None:
        self._send(code, json.dumps(obj).encode(), "application/json")

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.partition("?")[0]
        route = GET_ROUTES.get(path)
        if route is not None:
            route(self)
        elif (r := oip.parse_route("GET", path)) is not None:
            self._oip_get(r)
        else:
            self._json(404, {"error": f"no such endpoint: GET {self.path}"})

    def _health(self) -> None:
        rt = self.server.get_runtime()
        self._json(200, {"status": "ok", "model": rt.bundle if rt else None,
                         "delegate": rt.delegate if rt else None})

    def _model(self) -> None:
        rt = self.server.get_runtime()
        if rt is None:
            self._json(503, {"error": "no model is active"})
        else:
            self._json(200, rt.spec())

    def _metrics(self) -> None:
        code, body, ctype = metrics_exposition(self.server.metrics, self.headers.get("Accept"))
        self._send(code, body, ctype)

    def _oip_get(self, route: oip.Route) -> None:
        rt = self.server.get_runtime()
        if route.kind == "server":
            self._json(200, oip.server_metadata(__version__))
        elif route.kind == "live":
            self._json(200, {"live": True})
        elif route.kind == "ready":
            self._json(200 if rt else 503, {"ready": rt is not None})
        elif rt is None:
            self._json(503, {"error": "no model is active"})
        else:
            try:
                oip.check_model(rt.manifest, route)
            except oip.UnknownModelError as e:
                self._json(404, {"error": str(e)})
                return
            if route.kind == "model_ready":
                self._json(200, {"name": rt.manifest.name, "ready": True})
            else:
                self._json(200, oip.model_metadata(rt.manifest, rt.variant.format))

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.partition("?")[0]
        route = oip.parse_route("POST", path) if path != "/v1/predict" else None
        if path != "/v1/predict" and route is None:
            self.close_connection = True  # its body is not read: never parse it as a request
            self._json(404, {"error": f"no such endpoint: POST {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self._json(411, {"error": "Content-Length is required"})
            return
        if length < 0 or length > self.server.max_body:
            self.close_connection = True
            self._json(413, {"error": f"body of {length} bytes is over the "
                                      f"{self.server.max_body}-byte limit"})
            return
        body = self._read_body(length)
        if body is None:
            return
        rt = self.server.get_runtime()
        if rt is None:
            self._json(503, {"error": "no model is active"})
            return
        try:
            if route is None:
                inputs, pred = self._v1_predict(rt, body)
            else:
                inputs, pred = self._oip_infer(rt, route, body)
        except InputTooLargeError as e:
            self.server.recorder.record_error()
            self.close_connection = True
            self._json(413, {"error": str(e)})
            return
        except oip.UnknownModelError as e:
            self.server.recorder.record_error()
            self._json(404, {"error": str(e)})
            return
        except PredictError as e:
            self.server.recorder.record_error()
            self._json(400, {"error": str(e)})
            return
        except Exception as e:  # never let a request kill the server
            log.exception("predict failed")
            self.server.recorder.record_error()
            self._json(500, {"error": f"internal error: {e}"})
            return
        if self.server.shadow is not None:  # after answering: never delays the caller
            self.server.shadow.offer(inputs, pred.outputs, pred.latency_ms)

    def _v1_predict(self, rt: ModelRuntime, body: bytes) -> tuple[Any, Prediction]:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype == NPZ:
            bounds = input_bounds(rt.manifest.inputs, self.server.max_input_bytes)
            inputs: Any = decode_npz(body, bounds, self.server.max_input_bytes)
        else:
            inputs = decode_json(body)
        pred = rt.predict(inputs)
        self.server.recorder.record(pred.latency_ms)  # before answering: seen by the caller
        if ctype == NPZ:
            buf = io.BytesIO()
            # the numpy stub types **kwds like the allow_pickle flag; they are the arrays
            np.savez(buf, **pred.outputs)  # type: ignore[arg-type]
            self._send(200, buf.getvalue(), NPZ, {"X-Edgefleet-Bundle": pred.bundle,
                                                  "X-Edgefleet-Delegate": pred.delegate})
        else:
            self._json(200, {"outputs": {k: v.tolist() for k, v in pred.outputs.items()},
                             "bundle": pred.bundle, "delegate": pred.delegate})
        return inputs, pred

    def _oip_infer(self, rt: ModelRuntime, route: oip.Route, body: bytes
                   ) -> tuple[Any, Prediction]:
        oip.check_model(rt.manifest, route)
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity":
            raise PredictError(f"Content-Encoding {encoding!r} is not supported; send the "
                               "body uncompressed")
        req = oip.decode_infer(body, self.headers.get(oip_binary.HEADER), rt.manifest,
                               self.server.max_input_bytes)
        pred = rt.predict(req.inputs)
        answer, header_len = oip.encode_infer(req, pred.outputs, rt.manifest)
        self.server.recorder.record(pred.latency_ms)
        if header_len is None:
            self._send(200, answer, "application/json")
        else:
            self._send(200, answer, "application/octet-stream",
                       {oip_binary.HEADER: str(header_len)})
        return req.inputs, pred

    def _read_body(self, length: int) -> bytes | None:
        """The body, or None (answered 408, connection closed) when it has not fully
        arrived within ``read_timeout_s`` of the headers: a stalled or trickling client
        cannot hold this thread longer than that."""
        deadline = time.monotonic() + self.server.read_timeout_s
        buf = bytearray()
        try:
            while len(buf) < length:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self.connection.settimeout(left)
                chunk = self.rfile.read1(min(length - len(buf), 1 << 20))
                if not chunk:
                    raise ConnectionError("client closed the connection")
                buf += chunk
            self.connection.settimeout(self.server.read_timeout_s)
        except (TimeoutError, ConnectionError) as e:
            self.close_connection = True
            if isinstance(e, TimeoutError):
                log.info("local api: body of %d bytes not received within %.1f s; closing",
                         length, self.server.read_timeout_s)
                try:
                    self._json(408, {"error": f"request body not received within "
                                              f"{self.server.read_timeout_s:g} s"})
                except OSError:
                    pass
            return None
        return bytes(buf)


GET_ROUTES: dict[str, Callable[[_Handler], None]] = {
    "/v1/health": _Handler._health,
    "/v1/model": _Handler._model,
    "/metrics": _Handler._metrics,
}
"""Exact-path GET routes (query string ignored); the ``/v2`` routes are matched by
``oip.parse_route``. Add a GET endpoint with one entry here."""


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` at once: one more is answered
    503 and closed by the accepting thread without starting a thread."""

    daemon_threads = True
    get_runtime: Callable[[], ModelRuntime | None]
    recorder: TelemetryRecorder
    max_body: int
    max_input_bytes: int
    read_timeout_s: float
    slots: threading.BoundedSemaphore
    shadow: Any  # a ShadowRunner (``offer``) or None
    metrics: Any = None  # an AgentMetrics (GET /metrics) or None

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self._refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def _refuse_busy(self, request: socket.socket) -> None:
        body = json.dumps({"error": "too many open connections; retry"}).encode()
        try:
            request.settimeout(1.0)
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
                            b"application/json\r\nConnection: close\r\nContent-Length: "
                            + str(len(body)).encode() + b"\r\n\r\n" + body)
        except OSError:
            pass
        self.shutdown_request(request)


class LocalApi:
    """Serve the local API in a background thread; a context manager."""

    def __init__(
        self,
        get_runtime: Callable[[], ModelRuntime | None],
        recorder: TelemetryRecorder,
        *,
        host: str = "127.0.0.1",
        port: int = 8765,
        state_dir: Path | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        shadow: Any = None,
        metrics: Any = None,
    ) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.get_runtime = get_runtime
        self._server.recorder = recorder
        self._server.max_body = max_body
        self._server.max_input_bytes = max_input_bytes
        self._server.read_timeout_s = read_timeout_s
        self._server.slots = threading.BoundedSemaphore(max_connections)
        self._server.shadow = shadow
        self._server.metrics = metrics
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread: threading.Thread | None = None
        if state_dir is not None:
            atomic_write_json(Path(state_dir) / "api.json",
                              {"host": host, "port": self.port,
                               "url": f"http://{host}:{self.port}"})

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalApi:
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="edgefleet-local-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> LocalApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
