"""The only place domain errors become HTTP status codes."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from fleet_server.errors import (
    AuthError,
    BundleRejectedError,
    ConflictError,
    CrossOriginError,
    EnrolmentError,
    FleetError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
)

STATUS_BY_ERROR: tuple[tuple[type[FleetError], int], ...] = (
    (AuthError, 401),
    (NotFoundError, 404),
    (ConflictError, 409),
    (PayloadTooLargeError, 413),
    (BundleRejectedError, 422),
    (InvalidInputError, 422),
    (EnrolmentError, 403),
    (CrossOriginError, 403),
)


def status_for(error: FleetError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return status
    return 400


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FleetError)
    status = status_for(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"detail": one_line(exc)}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(FleetError, _handle)
