"""Every error a service returns is JSON `{"error": "<code>", "detail": <message>}`.

The library and the repositories raise domain errors (`microgpt.errors`: NotFound,
Conflict, Invalid, Unavailable), mapped to HTTP here once (`DOMAIN_STATUS`); `ApiError` is
what code that speaks HTTP raises (auth, body limits, headers). The handlers installed by
`install_error_handlers` map both, FastAPI's HTTPException and request
validation errors (422) to that shape, and turn anything unexpected into a 500 whose
body says nothing about the code (the traceback goes to the log, never to the client).
`iter_limited_body` streams a request body while enforcing a size limit (413). A 405 lists
in `Allow` every method of the path, not only those of the first route that matched it.
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
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from microgpt.errors import Conflict, DomainError, Invalid, InvalidFields, NotFound, Unavailable

log = logging.getLogger(__name__)

# Most specific first: the first class an error is an instance of gives its status.
DOMAIN_STATUS: dict[type[DomainError], int] = {
    NotFound: 404,
    Conflict: 409,
    InvalidFields: 422,
    Invalid: 400,
    Unavailable: 503,
}


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


def as_api_error(e: DomainError) -> ApiError:
    """The HTTP status, code and detail of a domain error (for handlers and WebSocket frames)."""
    status = next((s for kind, s in DOMAIN_STATUS.items() if isinstance(e, kind)), 500)
    return ApiError(status, e.code, e.detail)


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


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return await _api_error(request, as_api_error(exc))


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    return error_response(exc.status_code, error_code(exc.status_code), exc.detail, headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers at this request's path.

    Starlette's own 405 names only the methods of the first route whose path matched, but
    one path is often several routes (GET, PATCH and DELETE of `/models/{name}`).
    """
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        if route.methods and route.path and compile_path(route.path)[0].match(request.scope["path"]):
            methods |= route.methods
    return sorted(methods)


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
    app.add_exception_handler(DomainError, _domain_error)
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
