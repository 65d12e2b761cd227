"""WebSocket chat at `/ws/chat`: many turns over one socket, streamed token events, cancel mid-answer.

Protocol (JSON text frames; `id` is the client's turn id, echoed in every event of that turn,
an `invalid_frame` error included when the frame's JSON has a readable `id`):

    client: {"model": "chat@prod", "messages": [{"role": "user", "content": "hi"}], "params": {}, "id": "t1"}
            {"model": ..., "prompt": "plain text to continue", "params": {"max_tokens": 20, "temperature": 0}}
            {"type": "cancel"}                                    # ends the current answer
            {"type": "auth", "api_key": "..."}                    # first frame, when no header/query key
    server: {"type": "start", "id", "model", "prompt_tokens", "dropped_turns"}
            {"type": "token", "id", "text", "token_ids"}          # one per text delta
            {"type": "done", "id", "finish_reason", "text", "usage": {...}, "dropped_turns",
             "timings": {"ttft_s", "total_s", "tokens_per_s"}}  # finish_reason "cancelled" after a cancel
            {"type": "error", "id", "error": "<code>", "detail": "..."}  # the socket stays usable

`params` takes the sampling fields of the OpenAI routes (n is 1). One answer streams at a time:
a turn sent while one runs is an error event. `messages` use the chat template of
`services.inference.chat_prompt`; `prompt` is a plain completion. Each turn is independent:
the client sends the whole conversation, as with the REST API. A conversation that outgrows
the context loses its oldest turns, whole, until the reply has room (`max_tokens`, at most
half the context), as `microgpt chat` keeps it; `dropped_turns` says how many were left out.

Auth, when keys are configured: an `Authorization: Bearer` header, `?api_key=` in the URL
(browsers cannot set headers on a WebSocket), or an auth frame first; a missing or wrong key
is an error event, then close code 1008.

Limits are the REST API's: a frame over `inference_max_body_bytes` (1 MiB) is a `too_large`
error event, then close code 1009 (`microgpt serve` also sets uvicorn's `ws_max_size`, which
closes with 1009 before the frame is read); a binary frame is an `invalid_frame` error; a
prompt far over the model's context is refused from its beginning (`encode_prompt`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from fastapi import APIRouter, WebSocket
from pydantic import TypeAdapter, ValidationError
from starlette.websockets import WebSocketDisconnect

from microgpt.errors import DomainError
from services.common.auth import check_bearer
from services.common.errors import ApiError, as_api_error
from services.inference.chat_prompt import STOP
from services.inference.deps import MetricsDep, PoolDep, SettingsDep
from services.inference.generation import Generation
from services.inference.metrics import InferenceMetrics
from services.inference.model_pool import ModelPool
from services.inference.schemas import WsAuth, WsCancel, WsFrame, WsGenerate
from services.inference.submission import encode_prompt, fit_chat, submit_choices, usage

log = logging.getLogger(__name__)
router = APIRouter(tags=["websocket"])
frames: TypeAdapter[WsGenerate | WsCancel | WsAuth] = TypeAdapter(WsFrame)
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009


class InvalidFrame(ApiError):
    """A frame that is not a turn, a cancel or an auth; `turn_id` is its `id` when that is readable."""

    def __init__(self, detail: str, turn_id: str | None = None) -> None:
        super().__init__(400, "invalid_frame", detail)
        self.turn_id = turn_id


def frame_too_large(raw: str | bytes, limit: int) -> bool:
    """Whether a frame is over `limit` bytes (a text frame counts its UTF-8 bytes, as on the wire)."""
    return len(raw) > limit or (isinstance(raw, str) and len(raw.encode("utf-8", "surrogatepass")) > limit)


def turn_id(value: object) -> str | None:
    """`value` if it is a turn id the schema admits (so that an error may echo it), else None."""
    try:
        return WsGenerate.model_validate({"model": "", "id": value}).id
    except ValidationError:
        return None


def parse_frame(raw: str | bytes | None) -> WsGenerate | WsCancel | WsAuth:
    """A client text frame; a frame without `type` is a turn. Raises InvalidFrame naming what is wrong."""
    if not isinstance(raw, str):
        raise InvalidFrame("frames are JSON text; a binary frame is refused")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InvalidFrame(f"a frame must be a JSON object: {e}") from e
    if not isinstance(data, dict):
        raise InvalidFrame("a frame must be a JSON object")
    data.setdefault("type", "generate")
    try:
        return frames.validate_python(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc'][1:])) or 'frame'}: {x['msg']}" for x in e.errors())
        raise InvalidFrame(problems, turn_id(data.get("id"))) from e


class ChatSocket:
    """One connection: reads frames, runs at most one turn at a time as a task."""

    def __init__(
        self, ws: WebSocket, pool: ModelPool, max_tokens: int, max_frame_bytes: int, metrics: InferenceMetrics
    ) -> None:
        self.ws, self.pool, self.max_tokens, self.metrics = ws, pool, max_tokens, metrics
        self.max_frame_bytes = max_frame_bytes
        self.turn: asyncio.Task[None] | None = None
        self.generation: Generation | None = None

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send_text(json.dumps(event))

    async def send_error(self, e: ApiError, turn_id: str | None = None) -> None:
        await self.send({"type": "error", "id": turn_id, "error": e.error, "detail": e.detail})

    async def serve(self, keys: frozenset[str]) -> None:
        authorized = await self._authorize_from_handshake(keys)
        if authorized is None:
            return
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                raw = message.get("text")
                if raw is None:
                    raw = message.get("bytes")
                if raw is not None and frame_too_large(raw, self.max_frame_bytes):
                    limit = self.max_frame_bytes
                    too_large = ApiError(
                        413, "too_large", f"a frame is larger than the limit of {limit} bytes"
                    )
                    await self._refuse(too_large, MESSAGE_TOO_BIG)
                    return
                try:
                    frame = parse_frame(raw)
                except InvalidFrame as e:
                    await self.send_error(e, e.turn_id)
                    continue
                if isinstance(frame, WsAuth):
                    try:
                        check_bearer(f"Bearer {frame.api_key}", keys)
                    except ApiError as e:
                        await self._refuse(e)
                        return
                    authorized = True
                    await self.send({"type": "authenticated"})
                elif not authorized:
                    await self._refuse(
                        ApiError(401, "unauthorized", "send {'type': 'auth', 'api_key': ...} first")
                    )
                    return
                elif isinstance(frame, WsCancel):
                    if self.turn is not None and not self.turn.done() and self.generation is not None:
                        self.generation.cancel()
                    else:
                        await self.send_error(ApiError(409, "not_generating", "no answer is streaming"))
                elif self.turn is not None and not self.turn.done():
                    await self.send_error(
                        ApiError(409, "busy", "an answer is still streaming; cancel it or wait"), frame.id
                    )
                else:
                    self.generation = None
                    self.turn = asyncio.create_task(self._run_turn(frame))
        except WebSocketDisconnect:
            return
        finally:
            if self.turn is not None:
                self.turn.cancel()  # the generation's cleanup cancels its engine handle
                await asyncio.gather(self.turn, return_exceptions=True)

    async def _authorize_from_handshake(self, keys: frozenset[str]) -> bool | None:
        """True if authorized by header or query, False if an auth frame must follow, None if refused."""
        if not keys:
            return True
        header = self.ws.headers.get("authorization")
        query = self.ws.query_params.get("api_key")
        if header is None and query is None:
            return False
        try:
            check_bearer(header if header is not None else f"Bearer {query}", keys)
        except ApiError as e:
            await self._refuse(e)
            return None
        return True

    async def _refuse(self, e: ApiError, code: int = POLICY_VIOLATION) -> None:
        await self.send_error(e)
        await self.ws.close(code)

    async def _run_turn(self, frame: WsGenerate) -> None:
        try:
            await self._answer(frame)
        except ApiError as e:
            await self.send_error(e, frame.id)
        except DomainError as e:  # a bad conversation, a model that is not loaded: as over HTTP
            await self.send_error(as_api_error(e), frame.id)
        except (WebSocketDisconnect, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("WebSocket turn failed")
            await self.send_error(
                ApiError(500, "internal_error", "generation failed; see the service log"), frame.id
            )

    async def _answer(self, frame: WsGenerate) -> None:
        chat = frame.messages is not None
        if chat == (frame.prompt is not None):
            raise ApiError(400, "invalid_frame", "a turn needs exactly one of 'messages' and 'prompt'")
        started = time.perf_counter()
        async with self.pool.lease(frame.model) as model:
            dropped = 0
            if frame.messages is not None:
                reply_room = min(frame.params.max_tokens or self.max_tokens, self.max_tokens)
                text, dropped = fit_chat(model, frame.messages, reply_room)
            else:
                text = frame.prompt or ""
            [generation] = submit_choices(
                model,
                self.metrics,
                [encode_prompt(model, text)],
                frame.params,
                default_max_tokens=self.max_tokens,
                max_tokens_cap=self.max_tokens,
                extra_stop=[STOP] if chat else [],
                strip_leading_space=chat,
            )
            self.generation = generation
            await self.send(
                {
                    "type": "start",
                    "id": frame.id,
                    "model": model.id,
                    "prompt_tokens": generation.prompt_tokens,
                    "dropped_turns": dropped,
                }
            )
            parts: list[str] = []
            async for delta in generation.deltas():
                if delta.text:
                    parts.append(delta.text)
                    ids = [t.id for t in delta.tokens]
                    await self.send({"type": "token", "id": frame.id, "text": delta.text, "token_ids": ids})
            total = (generation.finished_at or time.perf_counter()) - generation.submitted_at
            self.metrics.request_duration.labels(model.id).observe(time.perf_counter() - started)
            await self.send(
                {
                    "type": "done",
                    "id": frame.id,
                    "model": model.id,
                    "finish_reason": generation.finish_reason,
                    "text": "".join(parts),
                    "usage": usage([generation]).model_dump(),
                    "dropped_turns": dropped,
                    "timings": {
                        "ttft_s": generation.ttft,
                        "total_s": total,
                        "tokens_per_s": generation.completion_tokens / total if total > 0 else None,
                    },
                }
            )


@router.websocket("/ws/chat")
async def ws_chat(ws: WebSocket, pool: PoolDep, settings: SettingsDep, metrics: MetricsDep) -> None:
    await ws.accept()
    socket = ChatSocket(ws, pool, settings.inference_max_tokens, settings.inference_max_body_bytes, metrics)
    await socket.serve(settings.api_keys())
