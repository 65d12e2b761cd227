"""The inference service's FastAPI factory: registry models behind OpenAI, native and WebSocket APIs.

    microgpt serve inference                                   # 127.0.0.1:8000
    MICROGPT_INFERENCE_MODELS=names@production:int8 microgpt serve inference

Errors: every route answers the project's `{"error": "<code>", "detail": "<message>"}`,
except that under `/v1` the `error` member is OpenAI's object
`{"message", "type", "param", "code"}` (the project code is `error.code`; `detail` is still
there), because OpenAI clients read `error.message`. Auth (a bearer key, when
`MICROGPT_API_KEY` is set) guards `/v1`, `/generate`, `/tokenize`, `/detokenize`, `/admin`
and `/ws/chat` (which checks it itself, see `ws_chat`); `/healthz`, `/readyz` and `/metrics`
stay public. Models in `MICROGPT_INFERENCE_MODELS` load in the background after start-up,
after the native decode kernel is built (once per install, announced on stderr; see
`microgpt.cpp`): `/healthz` answers at once, `/readyz` once the kernel is built, every
start-up model has loaded (or failed, logged) and at least one model is serving. Each load
is logged at INFO (ref, version, precision, seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import prometheus_client
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from microgpt.settings import Settings, get_settings
from services.common.auth import require_api_key
from services.common.errors import error_response, install_error_handlers, too_large
from services.common.http_metrics import instrument
from services.common.openapi import create_api, document_errors
from services.inference import interpret_api, native_api, openai_api, ws_chat
from services.inference.deps import PoolDep
from services.inference.metrics import InferenceMetrics
from services.inference.model_pool import ModelPool
from services.inference.schemas import Health, OpenAIErrorResponse, Readiness

OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 405: "invalid_request_error", 409: "invalid_request_error",
                413: "invalid_request_error", 422: "invalid_request_error",
                429: "rate_limit_error"}  # fmt: skip
NATIVE_V1_PATHS = frozenset({"/v1/interpret"})
ERROR_STATUSES = [400, 401, 403, 404, 409, 413, 422, 429, 500, 502, 503]
log = logging.getLogger(__name__)


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
    handler: Callable[[Request, Any], Response | Awaitable[Response]],
) -> Callable[..., Awaitable[Response]]:
    """Wrap an error handler so that under /v1 the body carries OpenAI's error object."""

    async def wrapped(request: Request, exc: Exception) -> Response:
        answer = handler(request, exc)  # Starlette allows plain functions as handlers too
        response = await answer if inspect.isawaitable(answer) else answer
        if not openai_path(request.url.path) or not isinstance(response, JSONResponse):
            return response
        body = json.loads(bytes(response.body))
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


def openai_path(path: str) -> bool:
    """OpenAI's routes live under /v1; microgpt's own there (/v1/interpret) keep ErrorResponse."""
    return path.startswith("/v1/") and path not in NATIVE_V1_PATHS


def openai_errors_under_v1(path: str) -> type[OpenAIErrorResponse] | None:
    return OpenAIErrorResponse if openai_path(path) else None


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


def build_kernels(backend: str) -> None:
    """Build the native decode step's kernel if this backend may use it, so that neither `/readyz`
    nor a first request waits on a compiler unannounced (`microgpt.cpp` says what it builds)."""
    if backend not in ("auto", "native"):
        return
    from microgpt.cpp import build_all

    try:
        build_all(["microgpt_native_decode"])
    except Exception as e:  # no compiler or ninja: `auto` decodes with eager PyTorch, `native` says why
        log.warning("the native decode kernel could not be built: %s", e)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    async def preload() -> None:
        freeze_heap()  # the imported libraries and the app
        await asyncio.to_thread(build_kernels, settings.inference_backend)
        app.state.kernels_ready = True
        await pool.preload(settings.inference_models)
        app.state.models_preloaded = True
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

    app = create_api(title="microgpt inference", lifespan=lifespan)
    registry = prometheus_client.CollectorRegistry()
    metrics = InferenceMetrics(registry, lambda: pool.engine_stats())
    pool = ModelPool(settings, metrics)
    app.state.settings, app.state.pool, app.state.metrics = settings, pool, metrics
    app.state.kernels_ready = False
    app.state.models_preloaded = False
    app.state.interpret_limiter = anyio.CapacityLimiter(1)

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
    app.include_router(interpret_api.router, dependencies=auth)
    app.include_router(ws_chat.router)

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """The process is up (models may still be loading)."""
        return Health()

    @app.get("/readyz", response_model=Readiness, tags=["health"])
    async def readyz(pool: PoolDep) -> Readiness | JSONResponse:
        """The kernel is built, the start-up models are loaded and one is serving; 503 until then.

        Ready only after every start-up model was tried, so a client (or a load balancer) that
        waits for readiness finds all of them listed, not just the first to load."""
        if not app.state.kernels_ready:
            return error_response(503, "not_ready", "building the native decode kernel (once per install)")
        if not app.state.models_preloaded:
            return error_response(503, "not_ready", "loading the models of MICROGPT_INFERENCE_MODELS")
        loaded = [m.id for m in pool.loaded()]
        if not loaded:
            return error_response(503, "not_ready", "no model is loaded yet")
        failed = pool.failed_engines()
        if failed:  # restarted by the next request for them
            return error_response(503, "not_ready", f"the engine stopped for {', '.join(failed)}")
        return Readiness(models=loaded)

    document_errors(app, ERROR_STATUSES, openai_errors_under_v1)
    return app
