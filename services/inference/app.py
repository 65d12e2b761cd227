"""The inference service's FastAPI factory: registry models behind OpenAI, native and WebSocket APIs.

    microgpt serve inference                                   # 127.0.0.1:8000
    MICROGPT_INFERENCE_MODELS=names@production:int8 microgpt serve inference

Errors: every route answers the project's `{"error": "<code>", "detail": "<message>"}`,
except that under `/v1` the `error` member is OpenAI's object
`{"message", "type", "param", "code"}` (the project code is `error.code`; `detail` is still
there), because OpenAI clients read `error.message`. Auth (a bearer key, when
`MICROGPT_API_KEY` is set) guards `/v1`, `/generate`, `/tokenize`, `/detokenize`, `/admin`
and `/ws/chat` (which checks it itself, see `ws_chat`); `/healthz`, `/readyz` and `/metrics`
stay public. Models in `MICROGPT_INFERENCE_MODELS` load in the background after start-up:
`/healthz` answers at once, `/readyz` once a model is loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import prometheus_client
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from microgpt.settings import Settings, get_settings
from services.common.auth import require_api_key
from services.common.errors import error_response, install_error_handlers, too_large
from services.common.http_metrics import instrument
from services.inference import native_api, openai_api, ws_chat
from services.inference.deps import PoolDep
from services.inference.metrics import InferenceMetrics
from services.inference.model_pool import ModelPool
from services.inference.schemas import Health, Readiness

OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "invalid_request_error", 422: "invalid_request_error",
                429: "rate_limit_error"}  # fmt: skip


class BodyTooLarge(HTTPException):
    """Raised while a body without Content-Length streams past the limit (FastAPI re-raises HTTPException)."""


class BodyLimit:
    """413 for a request body over `limit` bytes: at once from Content-Length, else as it streams in."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            e = too_large(self.limit)
            await error_response(e.status, e.error, e.detail)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(413, too_large(self.limit).detail)
            return message

        await self.app(scope, limited, send)


def _openai_shaped(
    handler: Callable[[Request, Exception], Awaitable[Response]],
) -> Callable[..., Awaitable[Response]]:
    """Wrap an error handler so that under /v1 the body carries OpenAI's error object."""

    async def wrapped(request: Request, exc: Exception) -> Response:
        response = await handler(request, exc)
        if not request.url.path.startswith("/v1/") or not isinstance(response, JSONResponse):
            return response
        body = json.loads(response.body)
        code, detail = body.get("error"), body.get("detail")
        if isinstance(detail, list):  # validation errors: "body.temperature: Input should be ..."
            message = "; ".join(f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg')}" for e in detail)
        else:
            message = detail if isinstance(detail, str) else json.dumps(detail)
        status = response.status_code
        error = {
            "message": message,
            "type": OPENAI_TYPES.get(status, "server_error"),
            "param": None,
            "code": code,
        }
        headers = {
            k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")
        }
        return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)

    return wrapped


def freeze_heap() -> None:
    """Exempt every object alive now from the cyclic garbage collector's scans.

    A full collection walks every tracked object, and a serving process holds millions
    (torch, FastAPI, pydantic, the models): it held the GIL for 90 ms, stalling the decode
    loop and every stream, whenever a burst of requests had allocated enough to trigger one.
    What start-up built lives as long as the process, so it is frozen (Instagram's `gc.freeze`
    recipe); objects made later are collected as usual.
    """
    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    async def preload() -> None:
        freeze_heap()  # the imported libraries and the app
        await pool.preload(settings.inference_models)
        freeze_heap()  # and the models loaded at start-up

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(preload())]
        if settings.inference_poll_seconds > 0:
            tasks.append(asyncio.create_task(pool.poll_forever(settings.inference_poll_seconds)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await pool.close()

    app = FastAPI(title="microgpt inference", version="1", lifespan=lifespan)
    registry = prometheus_client.CollectorRegistry()
    metrics = InferenceMetrics(registry, lambda: pool.engine_stats())
    pool = ModelPool(settings, metrics)
    app.state.settings, app.state.pool, app.state.metrics = settings, pool, metrics

    install_error_handlers(app)

    async def body_too_large(request: Request, exc: Exception) -> Response:
        e = too_large(settings.inference_max_body_bytes)
        return error_response(e.status, e.error, e.detail)

    app.add_exception_handler(BodyTooLarge, body_too_large)
    for exc_type, handler in list(app.exception_handlers.items()):
        app.exception_handlers[exc_type] = _openai_shaped(handler)
    instrument(app, registry, "inference")
    app.add_middleware(BodyLimit, limit=settings.inference_max_body_bytes)

    auth = [Depends(require_api_key(settings.api_keys()))]
    app.include_router(openai_api.router, dependencies=auth)
    app.include_router(native_api.router, dependencies=auth)
    app.include_router(native_api.admin, dependencies=auth)
    app.include_router(ws_chat.router)

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """The process is up (models may still be loading)."""
        return Health()

    @app.get("/readyz", response_model=Readiness, tags=["health"])
    async def readyz(pool: PoolDep) -> Readiness | JSONResponse:
        """At least one model is loaded and serving; 503 until then."""
        loaded = [m.id for m in pool.loaded()]
        if not loaded:
            return error_response(503, "not_ready", "no model is loaded yet")
        return Readiness(models=loaded)

    return app
