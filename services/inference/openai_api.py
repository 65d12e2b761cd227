"""OpenAI-compatible routes: `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/models`.

Bodies, chunks and `data: [DONE]` follow OpenAI's API reference, so the official client works
unchanged, streaming included. Streams send, per choice, a first chat chunk with the role,
content chunks, and a last chunk with an empty delta and the finish reason; with
`stream_options.include_usage` every chunk has `"usage": null` and one more chunk with no
choices carries the usage, as OpenAI does. A failure after the stream has started is sent as
`data: {"error": {...}}` (the client raises it). Errors before that are HTTP errors in the
shape `app.py` documents.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, overload

from fastapi import APIRouter, Request

from microgpt.tokenizers import Tokenizer
from services.common.errors import ApiError
from services.inference.chat_prompt import STOP, render_messages
from services.inference.deps import MetricsDep, PoolDep, SettingsDep
from services.inference.generation import Generation, TokenInfo
from services.inference.metrics import InferenceMetrics
from services.inference.model_pool import LoadedModel, ModelPool
from services.inference.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    ModelCard,
    ModelList,
    TokenLogprob,
    TopLogprob,
)
from services.inference.sse import DONE, EventStream, sse
from services.inference.submission import collect_all, encode_prompt, merge, submit_choices, usage

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["openai"])

OpenAIFinish = Literal["stop", "length"]  # the schemas' finish_reason values
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or with `stream: true` Server-Sent Events ending `data: [DONE]`",
        "content": {
            "text/event-stream": {
                "itemSchema": {
                    "type": "object",
                    "properties": {"data": {"type": "string", "description": "a chunk as JSON, or [DONE]"}},
                    "required": ["data"],
                }
            }
        },
    }
}


@overload
def finish(reason: str) -> OpenAIFinish: ...
@overload
def finish(reason: None) -> None: ...
@overload
def finish(reason: str | None) -> OpenAIFinish | None: ...
def finish(reason: str | None) -> OpenAIFinish | None:
    """OpenAI's finish reasons: a cancelled sequence (a vanished client) reads as stopped."""
    return None if reason is None else "length" if reason == "length" else "stop"


def token_text(tokenizer: Tokenizer, token: int) -> str:
    return tokenizer.decode([token])


def completion_logprobs(tokenizer: Tokenizer, tokens: Sequence[TokenInfo], offset: int) -> CompletionLogprobs:
    out = CompletionLogprobs()
    for t in tokens:
        text = token_text(tokenizer, t.id)
        out.tokens.append(text)
        out.token_logprobs.append(t.logprob)
        out.top_logprobs.append(
            None if t.top_logprobs is None else {token_text(tokenizer, i): lp for i, lp in t.top_logprobs}
        )
        out.text_offset.append(offset)
        offset += len(text)
    return out


def chat_logprobs(tokenizer: Tokenizer, tokens: Sequence[TokenInfo]) -> ChatLogprobs:
    def top(token: int, logprob: float) -> TopLogprob:
        text = token_text(tokenizer, token)
        return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode()))

    content = [
        TokenLogprob(
            **top(t.id, t.logprob if t.logprob is not None else 0.0).model_dump(),
            top_logprobs=[top(i, lp) for i, lp in t.top_logprobs or []],
        )
        for t in tokens
    ]
    return ChatLogprobs(content=content)


class ChunkFormat:
    """Streamed chunks as `data: <json>` lines, without a pydantic model per chunk.

    Only the choice changes from chunk to chunk, so the rest is rendered once; the output is
    what `Completion` / `ChatCompletionChunk.model_dump_json()` give (usage null until the
    last chunk), at a fraction of the cost per token.
    """

    def __init__(self, rid: str, obj: str, created: int, model_id: str) -> None:
        head = json.dumps({"id": rid, "object": obj, "created": created, "model": model_id}, **_COMPACT)
        self.head = f'data: {head[:-1]},"choices":['
        self.tail = '],"usage":null,"system_fingerprint":null}\n\n'

    def __call__(self, choice: dict[str, Any]) -> str:
        return self.head + json.dumps(choice, **_COMPACT) + self.tail


_COMPACT: dict[str, Any] = {"separators": (",", ":"), "ensure_ascii": False}


async def _stream(
    chunks: AsyncIterator[str], pool: ModelPool, model: LoadedModel, metrics: InferenceMetrics, started: float
) -> AsyncIterator[str]:
    """The SSE body: the chunks, an error event if they fail, then [DONE]; releases the model at the end."""
    try:
        async for chunk in chunks:
            yield chunk
        yield DONE
    except Exception as e:  # the status line is gone: report in-band, as OpenAI does
        log.exception("stream failed for %s", model.id)
        yield sse({"error": {"message": f"generation failed: {e}", "type": "server_error", "param": None,
                             "code": "internal_error"}})  # fmt: skip
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
        pool.release(model)
        metrics.request_duration.labels(model.id).observe(time.perf_counter() - started)


# --- /v1/completions ----------------------------------------------------------------------------


def _prompts(body: CompletionRequest) -> list[str | list[int]]:
    p = body.prompt
    if isinstance(p, str):
        return [p]
    if not p:
        raise ApiError(400, "invalid_prompt", "the prompt list is empty")
    if isinstance(p[0], int):
        return [list(p)]
    return list(p)


@router.post("/completions", response_model=Completion, responses=STREAMED)
async def completions(
    body: CompletionRequest, request: Request, pool: PoolDep, settings: SettingsDep, metrics: MetricsDep
) -> Completion | EventStream:
    started = time.perf_counter()
    if body.echo and body.logprobs is not None:
        raise ApiError(400, "unsupported", "echo together with logprobs is not supported")
    model = await pool.acquire(body.model)
    try:
        prompts = _prompts(body)
        ids = [encode_prompt(model, p) for p in prompts]
        echoes = [
            (p if isinstance(p, str) else model.tokenizer.decode(p)) if body.echo else "" for p in prompts
        ]
        generations = submit_choices(
            model,
            metrics,
            ids,
            body,
            default_max_tokens=COMPLETION_DEFAULT_MAX_TOKENS,
            max_tokens_cap=settings.inference_max_tokens,
            logprobs=body.logprobs,
        )
    except BaseException:
        pool.release(model)
        raise
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _completion_chunks(rid, created, model, generations, echoes, body, include_usage)
        return EventStream(_stream(chunks, pool, model, metrics, started))
    try:
        outcomes = await collect_all(request, generations)
    finally:
        pool.release(model)
    metrics.request_duration.labels(model.id).observe(time.perf_counter() - started)
    choices = []
    for index, outcome in enumerate(outcomes):
        echo = echoes[index // body.n]
        lp = (
            None if body.logprobs is None else completion_logprobs(model.tokenizer, outcome.tokens, len(echo))
        )
        choices.append(
            CompletionChoice(
                index=index,
                text=echo + outcome.text,
                logprobs=lp,
                finish_reason=finish(outcome.finish_reason),
            )
        )
    return Completion(
        id=rid, created=created, model=model.id, choices=choices, usage=usage(generations, body.n)
    )


async def _completion_chunks(
    rid: str,
    created: int,
    model: LoadedModel,
    generations: list[Generation],
    echoes: list[str],
    body: CompletionRequest,
    include_usage: bool,
) -> AsyncIterator[str]:
    offsets = [len(echoes[i // body.n]) for i in range(len(generations))]
    chunk = ChunkFormat(rid, "text_completion", created, model.id)
    for index in range(len(generations)):
        if echoes[index // body.n]:
            yield chunk(
                {"index": index, "text": echoes[index // body.n], "logprobs": None, "finish_reason": None}
            )
    async for index, delta in merge(generations):
        lp = None
        if body.logprobs is not None:
            logprobs = completion_logprobs(model.tokenizer, delta.tokens, offsets[index])
            offsets[index] += sum(len(t) for t in logprobs.tokens)
            lp = logprobs.model_dump()
        elif not delta.text and delta.finish_reason is None:
            continue
        yield chunk(
            {"index": index, "text": delta.text, "logprobs": lp, "finish_reason": finish(delta.finish_reason)}
        )
    if include_usage:
        yield sse(
            Completion(id=rid, created=created, model=model.id, choices=[], usage=usage(generations, body.n))
        )


# --- /v1/chat/completions -----------------------------------------------------------------------


@router.post("/chat/completions", response_model=ChatCompletion, responses=STREAMED)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, pool: PoolDep, settings: SettingsDep, metrics: MetricsDep
) -> ChatCompletion | EventStream:
    started = time.perf_counter()
    sampling = body.model_copy(update={"max_tokens": body.max_completion_tokens or body.max_tokens})
    top = (body.top_logprobs or 0) if body.logprobs else None
    model = await pool.acquire(body.model)
    try:
        ids = encode_prompt(model, render_messages(body.messages))
        generations = submit_choices(
            model,
            metrics,
            [ids],
            sampling,
            default_max_tokens=settings.inference_max_tokens,
            max_tokens_cap=settings.inference_max_tokens,
            extra_stop=[STOP],
            logprobs=top,
            strip_leading_space=True,
        )
    except BaseException:
        pool.release(model)
        raise
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _chat_chunks(rid, created, model, generations, top is not None, include_usage)
        return EventStream(_stream(chunks, pool, model, metrics, started))
    try:
        outcomes = await collect_all(request, generations)
    finally:
        pool.release(model)
    metrics.request_duration.labels(model.id).observe(time.perf_counter() - started)
    choices = [
        ChatChoice(
            index=index,
            message=AssistantMessage(content=outcome.text),
            logprobs=None if top is None else chat_logprobs(model.tokenizer, outcome.tokens),
            finish_reason=finish(outcome.finish_reason),
        )
        for index, outcome in enumerate(outcomes)
    ]
    return ChatCompletion(
        id=rid, created=created, model=model.id, choices=choices, usage=usage(generations, body.n)
    )


async def _chat_chunks(
    rid: str,
    created: int,
    model: LoadedModel,
    generations: list[Generation],
    logprobs: bool,
    include_usage: bool,
) -> AsyncIterator[str]:
    chunk = ChunkFormat(rid, "chat.completion.chunk", created, model.id)

    def choice(
        index: int, delta: dict[str, Any], lp: dict[str, Any] | None = None, reason: str | None = None
    ) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": lp, "finish_reason": reason}

    for index in range(len(generations)):
        yield chunk(choice(index, {"role": "assistant", "content": ""}))
    async for index, delta in merge(generations):
        if delta.text or (logprobs and delta.tokens):
            lp = chat_logprobs(model.tokenizer, delta.tokens).model_dump() if logprobs else None
            yield chunk(choice(index, {"role": None, "content": delta.text}, lp))
        if delta.finish_reason is not None:
            yield chunk(choice(index, {"role": None, "content": None}, reason=finish(delta.finish_reason)))
    if include_usage:
        yield sse(
            ChatCompletionChunk(
                id=rid,
                created=created,
                model=model.id,
                choices=[],
                usage=usage(generations, len(generations)),
            )
        )


# --- /v1/models ---------------------------------------------------------------------------------


def model_card(model: LoadedModel) -> ModelCard:
    return ModelCard(
        id=model.id,
        created=model.created,
        name=model.spec.ref,
        version=model.version_number,
        precision=model.spec.precision,
        weight_bytes=model.weight_bytes,
        max_model_len=model.max_model_len,
    )


@router.get("/models", response_model=ModelList)
async def list_models(pool: PoolDep) -> ModelList:
    """The loaded models (others load on first use)."""
    return ModelList(data=[model_card(m) for m in pool.loaded()])
