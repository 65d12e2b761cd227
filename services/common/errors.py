"""Every error a service returns is JSON `{"error": "<code>", "detail": <message>}`.

`ApiError` is the one exception routes raise for expected failures; the handlers
installed by `install_error_handlers` map it, FastAPI's HTTPException and request
validation errors (422) to that shape, and turn anything unexpected into a 500 whose
body says nothing about the code (the traceback goes to the log, never to the client).
`iter_limited_body` streams a request body while enforcing a size limit (413).
"""

from __future__ import annotations

import http
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An expected failure with its HTTP status, a short machine-readable code and a detail."""

    def __init__(
        self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


def error_code(status: int) -> str:
    """`404` -> `not_found`: the standard reason phrase as a code."""
    try:
        return http.HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def error_response(
    status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": error, "detail": jsonable_encoder(detail)}
    return JSONResponse(body, status_code=status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.error, exc.detail, exc.headers)


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, error_code(exc.status_code), exc.detail, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return error_response(422, "validation_error", errors)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error; see the service log")


def install_error_handlers(app: FastAPI) -> None:
    """Make every error response of `app` the JSON shape above."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)


def too_large(limit: int) -> ApiError:
    return ApiError(413, "too_large", f"the request body is larger than the limit of {limit} bytes")


def check_content_length(request: Request, limit: int) -> int | None:
    """The declared body size, refusing one over `limit` before a byte is read (413)."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    try:
        size = int(declared)
    except ValueError:
        raise ApiError(400, "bad_request", f"Content-Length {declared!r} is not an integer") from None
    if size < 0:
        raise ApiError(400, "bad_request", "Content-Length is negative")
    if size > limit:
        raise too_large(limit)
    return size


async def iter_limited_body(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body chunk by chunk, as it arrives; 413 as soon as it passes `limit` bytes."""
    check_content_length(request, limit)
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise too_large(limit)
        if chunk:
            yield chunk
