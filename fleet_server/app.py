"""``create_app(settings)``: the FastAPI application with its lifespan (broker + bridge)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from fleet_server.api.deps import require_admin
from fleet_server.api.errors import install_error_handlers
from fleet_server.api.routes import (
    api_tokens,
    bundle_blobs,
    bundles,
    deployments,
    devices,
    enrolment,
    health,
    publishers,
    users,
)
from fleet_server.api.routes import audit as audit_routes
from fleet_server.api.routes import metrics as metrics_routes
from fleet_server.api.routes import rollouts as rollout_routes
from fleet_server.api.routes import trust as trust_routes
from fleet_server.config import ServerSettings
from fleet_server.console.auth_pages import router as console_auth_router
from fleet_server.console.fleet_pages import router as console_fleet_router
from fleet_server.console.live import router as console_live_router
from fleet_server.console.rollouts import router as console_rollouts_router
from fleet_server.console.routes import router as console_router
from fleet_server.console.session import LoginRequired
from fleet_server.http_metrics import HttpMetricsMiddleware
from fleet_server.services import FleetServices

API_PREFIX = "/api/v1"


def create_app(settings: ServerSettings, *,
               on_started: Callable[[FleetServices], None] | None = None) -> FastAPI:
    """Build the app; the data dir is initialised now, broker and bridge start in lifespan.

    ``on_started`` runs once the broker is bound (used to print and write ports).
    """
    services = FleetServices(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.start()
        try:
            if on_started is not None:
                on_started(services)
            yield
        finally:
            await services.stop()

    # Every request body is capped before it is read (413 on a larger Content-Length, or as
    # soon as a streamed body passes the cap); bundle uploads and rollouts get their own caps.
    app = FastAPI(title="edgefleet fleet server", version="1", lifespan=lifespan,
                  docs_url="/docs", openapi_url="/openapi.json",
                  max_body_size=settings.max_body_bytes)
    app.state.services = services
    install_error_handlers(app)
    app.add_middleware(HttpMetricsMiddleware, metrics=services.metrics)  # by route template
    services.metrics.track_fleet(services.registry.fleet_overview,  # read at each scrape
                                 services.rollout_store.list_rollouts)

    api = APIRouter(prefix=API_PREFIX)
    api.include_router(health.router)
    api.include_router(enrolment.router)  # /enrol is public; /enrolment-tokens needs admin
    api.include_router(trust_routes.router)  # public: TUF metadata is signed
    admin = [Depends(require_admin)]  # the role fleet_server.roles.ROUTE_ROLES names
    api.include_router(bundle_blobs.router)  # by-hash: public or device/user, per settings
    api.include_router(bundles.router,  # admin per route; /download also takes a device
                       max_body_size=settings.max_upload_bytes)
    for module in (publishers, devices, deployments, users, api_tokens, audit_routes):
        api.include_router(module.router, dependencies=admin)
    api.include_router(rollout_routes.router, dependencies=admin,
                       max_body_size=settings.max_rollout_body_bytes)
    app.include_router(api)
    app.include_router(console_auth_router)  # login, logout, users and tokens
    app.include_router(console_rollouts_router)
    app.include_router(console_fleet_router)
    app.include_router(console_live_router)
    app.include_router(console_router)
    app.include_router(metrics_routes.router)  # GET /metrics (admin token)

    @app.exception_handler(LoginRequired)
    async def _to_login(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse("/console/login", status_code=303)

    @app.get("/", include_in_schema=False)
    def root() -> Response:
        return RedirectResponse("/console/", status_code=303)

    return app
