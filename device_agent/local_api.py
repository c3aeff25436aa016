"""The local inference API for apps on the device (``http.server``, loopback by default).

POST /v1/predict  JSON {"inputs": {name: nested list|scalar}} -> {"outputs", "bundle",
                  "delegate"}; or Content-Type application/x-npz (npz of named arrays),
                  answered as npz with X-Edgefleet-Bundle / X-Edgefleet-Delegate headers.
GET  /v1/health   {"status": "ok", "model": "name@version" | null}
GET  /v1/model    the active model's inputs/outputs spec (503 when none)
Errors: 400 {"error"} for bad requests, 413 over the body cap, 503 with no active model.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.errors import PredictError
from device_agent.persist import atomic_write_json
from device_agent.runtime import ModelRuntime
from device_agent.telemetry import TelemetryRecorder

__all__ = ["DEFAULT_MAX_BODY", "LocalApi"]

log = logging.getLogger(__name__)
DEFAULT_MAX_BODY = 16 * 1024 * 1024
NPZ = "application/x-npz"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("local api: " + format, *args)

    def _send(self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
              ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj: Any) -> None:
        self._send(code, json.dumps(obj).encode(), "application/json")

    def do_GET(self) -> None:  # noqa: N802
        rt = self.server.get_runtime()
        if self.path == "/v1/health":
            self._json(200, {"status": "ok", "model": rt.bundle if rt else None,
                             "delegate": rt.delegate if rt else None})
        elif self.path == "/v1/model":
            if rt is None:
                self._json(503, {"error": "no model is active"})
            else:
                self._json(200, rt.spec())
        else:
            self._json(404, {"error": f"no such endpoint: GET {self.path}"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/v1/predict":
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
        body = self.rfile.read(length)
        rt = self.server.get_runtime()
        if rt is None:
            self._json(503, {"error": "no model is active"})
            return
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        is_npz = ctype == NPZ
        try:
            inputs = _decode_npz(body) if is_npz else _decode_json(body)
            pred = rt.predict(inputs)
        except PredictError as e:
            self.server.recorder.record_error()
            self._json(400, {"error": str(e)})
            return
        except Exception as e:  # never let a request kill the server
            log.exception("predict failed")
            self.server.recorder.record_error()
            self._json(500, {"error": f"internal error: {e}"})
            return
        self.server.recorder.record(pred.latency_ms)
        if is_npz:
            buf = io.BytesIO()
            np.savez(buf, **pred.outputs)
            self._send(200, buf.getvalue(), NPZ, {"X-Edgefleet-Bundle": pred.bundle,
                                                  "X-Edgefleet-Delegate": pred.delegate})
        else:
            self._json(200, {"outputs": {k: v.tolist() for k, v in pred.outputs.items()},
                             "bundle": pred.bundle, "delegate": pred.delegate})
        if self.server.shadow is not None:  # after answering: never delays the caller
            self.server.shadow.offer(inputs, pred.outputs, pred.latency_ms)


def _decode_json(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PredictError(f"body is not valid JSON: {e}") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("inputs"), dict):
        raise PredictError('body must be a JSON object {"inputs": {name: tensor}}')
    return obj["inputs"]


def _decode_npz(body: bytes) -> dict[str, Any]:
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as e:
        raise PredictError(f"body is not a valid npz archive: {e}") from e


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    get_runtime: Callable[[], ModelRuntime | None]
    recorder: TelemetryRecorder
    max_body: int
    shadow: Any  # a ShadowRunner (``offer``) or None


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
        shadow: Any = None,
    ) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.get_runtime = get_runtime
        self._server.recorder = recorder
        self._server.max_body = max_body
        self._server.shadow = shadow
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
