"""HTTP request metrics of the fleet server: a pure ASGI middleware (no response buffering,
streamed downloads pass through untouched).

Labels are bounded: the route is the matched route's template (``/api/v1/devices/{device_id}``,
never the raw path), ``unmatched`` when no route matched (404s of any path); the method is
one of the standard ones or ``other``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from fleet_server.metrics import ServerMetrics

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


def route_template(scope: Scope) -> str:
    """The full template of the route that handled the request.

    FastAPI puts the matched route in the scope. Its ``path`` lacks the prefixes of the
    ``include_router`` calls above it (``/api/v1``) where FastAPI keeps included routers
    nested, so the prefix is taken from the raw path: the part before the suffix the
    route's own pattern matches (the app's prefixes are literal, so no value leaks in)."""
    route = scope.get("route")
    path, pattern = getattr(route, "path", None), getattr(route, "path_regex", None)
    if not isinstance(path, str) or pattern is None:
        return UNMATCHED
    raw = scope.get("path", "")
    start = 0
    while start != -1:
        if pattern.match(raw[start:]):
            return raw[:start] + path
        start = raw.find("/", start + 1)
    return path


class HttpMetricsMiddleware:
    """Counts each HTTP request by method, route template and status, and observes its
    duration (until the response is sent) by method and route template."""

    def __init__(self, app: ASGIApp, *, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the response started ends as a 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.observe_http(method, route_template(scope), status,
                                      time.perf_counter() - started)
