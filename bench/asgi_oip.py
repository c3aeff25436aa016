"""The alternative measured against the standard-library server: the same OIP infer route
as a minimal ASGI app under uvicorn (httptools parser, uvloop), for ``bench.serving``.

``python -m bench.asgi_oip SLOT_DIR PORT`` serves ``POST /v2/models/{name}/infer`` (and
``GET /v2/health/ready``) for the model in ``SLOT_DIR`` with the agent's own decoding
(``device_agent.oip``) and ``ModelRuntime``; nothing else of the local API (no caps,
timeouts or telemetry), so its numbers are a lower bound for a uvicorn-based local API.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from device_agent import oip, oip_binary
from device_agent.errors import PredictError
from device_agent.runtime import ModelRuntime

MAX_INPUT_BYTES = 64 * 1024 * 1024


def make_app(rt: ModelRuntime) -> Any:
    header = oip_binary.HEADER.lower().encode()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        route = oip.parse_route(scope["method"], scope["path"])
        status, answer, headers = 404, b'{"error": "no such endpoint"}', []
        if route is not None and route.kind == "ready":
            status, answer = 200, b'{"ready": true}'
        elif route is not None and route.kind == "infer":
            hl = dict(scope["headers"]).get(header)
            try:
                req = oip.decode_infer(body, hl.decode() if hl else None, rt.manifest,
                                       MAX_INPUT_BYTES)
                pred = rt.predict(req.inputs)
                answer, n = oip.encode_infer(req, pred.outputs, rt.manifest)
                status = 200
                if n is not None:
                    headers.append((header, str(n).encode()))
            except PredictError as e:
                status, answer = 400, f'{{"error": "{e}"}}'.encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/octet-stream"),
            (b"content-length", str(len(answer)).encode()), *headers]})
        await send({"type": "http.response.body", "body": answer})

    return app


def main(argv: list[str]) -> int:
    import uvicorn

    rt = ModelRuntime.load(Path(argv[0]), ["cpu"])
    uvicorn.run(make_app(rt), host="127.0.0.1", port=int(argv[1]), log_level="warning",
                loop="uvloop", http="httptools", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
