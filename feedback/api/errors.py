"""JSON error bodies for every failure: ``{"error": {"code": ..., "message": ...}}``.

Validation errors (422) also carry ``details``: each wrong parameter with where it was and what
was wrong.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

if TYPE_CHECKING:
    from fastapi import FastAPI, Request

__all__ = ["ApiError", "error_body", "install_error_handlers"]

_log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    422: "invalid_request",
    500: "internal",
    503: "unavailable",
}


class ApiError(HTTPException):
    """An HTTP error whose message is shown to the client as it is."""

    def __init__(
        self, status_code: int, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)


def error_body(status_code: int, message: str, **extra: Any) -> dict[str, Any]:
    """The JSON body of an error response."""
    return {"error": {"code": _CODES.get(status_code, "error"), "message": message, **extra}}


def _where(location: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(part) for part in location]
    if parts and parts[0] in ("query", "path", "body", "header") and len(parts) > 1:
        return f"{parts[0]} parameter {'.'.join(parts[1:])}"
    return ".".join(parts) or "request"


async def _http_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    message = error.detail if isinstance(error.detail, str) else str(error.detail)
    return JSONResponse(
        error_body(error.status_code, message),
        status_code=error.status_code,
        headers=error.headers,
    )


async def _validation_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    details = [
        {"where": _where(item.get("loc", ())), "message": item.get("msg", "invalid")}
        for item in error.errors()
    ]
    message = "; ".join(f"{d['where']}: {d['message']}" for d in details) or "invalid request"
    return JSONResponse(error_body(422, message, details=details), status_code=422)


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    _log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return JSONResponse(
        error_body(500, "internal error; the server log has the details"), status_code=500
    )


def install_error_handlers(app: FastAPI) -> None:
    """Make every error a JSON body with a code and a message."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
