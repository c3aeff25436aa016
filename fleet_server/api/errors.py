"""The only place domain errors become HTTP status codes."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from fleet_server.errors import (
    AuthError,
    BundleRejectedError,
    ConflictError,
    CrossOriginError,
    EnrolmentError,
    FleetError,
    ForbiddenError,
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
    (ForbiddenError, 403),
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
    if not isinstance(exc, FleetError):  # registered for FleetError only
        raise exc
    status = status_for(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"detail": one_line(exc)}, status_code=status, headers=headers)


ERROR_DETAIL_SCHEMA = {
    "title": "ErrorDetail", "type": "object", "required": ["detail"],
    "properties": {"detail": {"type": "string", "title": "Detail"}},
    "description": "A refusal named on one line (every error but request validation)."}


def _document_error_shapes(app: FastAPI) -> None:
    """A 422 is either FastAPI's request validation error (``detail``: a list) or a domain
    refusal (``detail``: one line, e.g. a bad PEM or plan); the schema says both."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        schema.setdefault("components", {}).setdefault("schemas", {})["ErrorDetail"] = \
            ERROR_DETAIL_SCHEMA
        either = {"anyOf": [{"$ref": "#/components/schemas/HTTPValidationError"},
                            {"$ref": "#/components/schemas/ErrorDetail"}]}
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                content = operation.get("responses", {}).get("422", {}).get("content", {})
                if "application/json" in content:
                    content["application/json"]["schema"] = either
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(FleetError, _handle)
    _document_error_shapes(app)
