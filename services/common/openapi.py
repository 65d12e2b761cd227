"""A service's API documentation: the OpenAPI document with the real error model, and an offline `/docs`.

FastAPI documents a 422 as its own `{"detail": [...]}` and no other error at all, while the
services answer every error as `ErrorResponse` (`services.common.errors`). `document_errors`
rewrites the generated document once: every operation lists every error status its service
can answer, each with the body it really has. `create_api` builds the app with Swagger UI
and ReDoc served from the `fastapi-offline` package rather than a CDN, so `/docs` works on a
machine without internet.
"""

from __future__ import annotations

import http
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel

from microgpt import __version__
from services.common.schemas import ErrorResponse

REF = "#/components/schemas/{model}"
FASTAPI_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")
ERROR_DESCRIPTIONS = {
    400: "the request is malformed or not possible",
    401: "the bearer key is missing (routes that need one, when MICROGPT_API_KEY is set)",
    403: "the bearer key is not valid",
    404: "the resource does not exist",
    409: "the request conflicts with the resource's state",
    410: "the resource was recorded but is gone",
    413: "the request body is larger than the limit",
    422: "a field is invalid; `detail` lists each invalid field",
    429: "too many requests are waiting; retry after `Retry-After` seconds",
    500: "an unexpected error (the service log has the traceback)",
    502: "an upstream service or file is broken",
    503: "the service or one it depends on is not ready",
}


def create_api(**kwargs: Any) -> FastAPI:
    """`FastAPI(**kwargs)` whose `/docs` and `/redoc` load their scripts from this server, not a CDN."""
    return FastAPIOffline(version=__version__, **kwargs)


def document_errors(
    app: FastAPI,
    statuses: list[int],
    error_model_for: Callable[[str], type[BaseModel] | None] = lambda path: None,
) -> None:
    """Document `statuses` on every operation of `app`, with the body `error_model_for(path)` describes
    (`ErrorResponse` where it gives None)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in FASTAPI_ERROR_SCHEMAS:
            components.pop(name, None)
        for path, operations in schema.get("paths", {}).items():
            model = error_model_for(path) or ErrorResponse
            ref = _component(components, model)
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                for status in statuses:
                    responses[str(status)] = {
                        "description": ERROR_DESCRIPTIONS.get(status) or http.HTTPStatus(status).phrase,
                        "content": {"application/json": {"schema": {"$ref": ref}}},
                    }
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def raw_body(media_type: str, description: str) -> dict[str, Any]:
    """The `openapi_extra` of a route that streams its request body itself (so FastAPI cannot see it)."""
    content = {media_type: {"schema": {"type": "string", "format": "binary"}}}
    return {"requestBody": {"required": True, "description": description, "content": content}}


def _component(components: dict[str, Any], model: type[BaseModel]) -> str:
    """Add `model` (and the models it uses) to the document's components; its `$ref`."""
    schema = model.model_json_schema(ref_template=REF)
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return REF.format(model=model.__name__)
