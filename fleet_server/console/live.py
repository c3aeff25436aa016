"""Live updates for console pages and the console's static files.

``GET /console/events?since=CURSOR[&device=ID]`` is a Server-Sent Events stream: the server
polls the registry's change cursor (``Registry.change_cursor``: one PRAGMA, no table scan;
with ``device``, ``Registry.device_cursor``: primary-key lookups of that device) every
``POLL_S`` and sends ``event: change`` with the new cursor when it moved.
The loop is bounded: after ``STREAM_S`` it sends ``event: bye`` and ends, and the page's
script reconnects with the last cursor it saw, so a stream never outlives its session by
more than ``STREAM_S`` and a proxy never sees an endless response. The page then re-fetches
itself and swaps the elements marked ``data-live`` (static/console.js).

``GET /console/static/NAME`` serves the files in ``static/`` (the console script, the chart
helper, the vendored uPlot); only names listed there, never a path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, StreamingResponse

from fleet_server.api.deps import ServicesDep
from fleet_server.console.routes import Csrf
from fleet_server.errors import NotFoundError

router = APIRouter(prefix="/console", include_in_schema=False)

POLL_S = 0.5
STREAM_S = 15.0
RETRY_MS = 1000
STATIC = Path(__file__).parent / "static"
_TYPES = {".js": "text/javascript", ".css": "text/css", ".LICENSE": "text/plain"}


@router.get("/events")
async def events(request: Request, services: ServicesDep, _: Csrf, since: str = "",
                 device: str | None = None) -> StreamingResponse:
    """``device=ID`` narrows the stream to one device (its row, telemetry and events)."""
    if device is not None:
        services.registry.get_device(device_id=device)  # 404 for an unknown device

    def cursor_now() -> str:
        if device is not None:
            return services.registry.device_cursor(device_id=device)
        return services.registry.change_cursor()

    async def stream() -> AsyncIterator[str]:
        last = since
        yield f"retry: {RETRY_MS}\n\n"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STREAM_S
        while loop.time() < deadline:
            if await request.is_disconnected():
                return
            cursor = await asyncio.to_thread(cursor_now)
            if cursor != last:
                last = cursor
                yield f"event: change\ndata: {cursor}\n\n"
            await asyncio.sleep(POLL_S)
        yield f"event: bye\ndata: {last}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _static_files() -> dict[str, Path]:
    return {p.relative_to(STATIC).as_posix(): p for p in STATIC.rglob("*") if p.is_file()}


@router.get("/static/{name:path}")
def static_file(name: str) -> FileResponse:
    path = _static_files().get(name)
    if path is None:
        raise NotFoundError(f"no console file {name}")
    media = _TYPES.get(path.suffix, "application/octet-stream")
    return FileResponse(path, media_type=media, headers={"Cache-Control": "max-age=3600"})
