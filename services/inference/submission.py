"""From a validated request to running generations: encode, check the context, submit, and wait or merge.

Every route (OpenAI, native, WebSocket) goes through `submit_choices`, so limits answer the
same everywhere: a prompt longer than the context is a 400 worded like OpenAI's (one far
longer is refused from its beginning, without tokenizing the rest), a full
engine queue is a 429 with `Retry-After` (never a wait), and max_tokens is capped by the
server setting and then by the context left (the engine's cap). Choices of one request are
all submitted before any is awaited, so the engine batches them.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from microgpt.chat import fit_turns, render
from microgpt.sampling import SamplingParams
from services.common.errors import ApiError
from services.inference.chat_prompt import chat_turns
from services.inference.generation import Delta, Generation, Outcome
from services.inference.metrics import InferenceMetrics
from services.inference.model_pool import LoadedModel
from services.inference.schemas import ChatMessage, Sampling, Usage

if TYPE_CHECKING:
    from starlette.requests import Request

# Characters probed per context token before a long prompt is tokenized whole: more than a
# token stands for on average in any of these tokenizers, so the probe finds a prompt too long.
PROBE_CHARS_PER_TOKEN = 16


def encode_text(model: LoadedModel, text: str, *, add_bos: bool = True) -> list[int]:
    """Token ids of `text`, BOS first when asked and the tokenizer has one; 400 if it cannot be encoded."""
    tokenizer = model.tokenizer
    try:
        return tokenizer.encode(text, add_bos=add_bos and tokenizer.bos_id is not None)
    except ValueError as e:
        raise ApiError(400, "invalid_prompt", f"the text cannot be encoded by this model: {e}") from e


def check_ids(model: LoadedModel, ids: Sequence[int]) -> list[int]:
    vocab = model.serving.model.config.vocab_size
    if any(not 0 <= t < vocab for t in ids):
        raise ApiError(400, "invalid_prompt", f"token ids must be in the vocabulary [0, {vocab})")
    return list(ids)


def context_exceeded(model: LoadedModel, tokens: str) -> ApiError:
    return ApiError(
        400,
        "context_length_exceeded",
        f"This model's maximum context length is {model.max_model_len} tokens. However, your prompt "
        f"has {tokens} tokens. Please reduce the length of the prompt.",
    )


def tokens_over(model: LoadedModel, text: str, limit: int) -> int | None:
    """A token count over `limit` read from the beginning of a text far longer than that; else None.

    A prompt may be a megabyte (the body and frame limit) where the context is a few hundred
    tokens; tokenizing all of it to count would cost CPU the request cannot use. So a text
    longer than PROBE_CHARS_PER_TOKEN characters per token of `limit` is probed: its beginning
    up to a space. Every tokenizer here works per character or byte, or splits words at spaces
    before merging within them, so that beginning has no more tokens than the whole text;
    if it already has more than `limit`, so has the whole.
    """
    probe = limit * PROBE_CHARS_PER_TOKEN
    if len(text) <= probe:
        return None
    cut = text.rfind(" ", 0, probe)
    if cut <= 0:
        return None  # one long word: only the whole text's count can tell
    found = len(encode_text(model, text[:cut]))
    return found if found > limit else None


def refuse_surely_too_long(model: LoadedModel, text: str) -> None:
    """Refuse a text far over the context after tokenizing only its beginning (`tokens_over`)."""
    found = tokens_over(model, text, model.max_model_len)
    if found is not None:
        raise context_exceeded(model, f"at least {found}")


def fit_chat(model: LoadedModel, messages: Sequence[ChatMessage], max_tokens: int) -> tuple[str, int]:
    """A conversation's prompt with its oldest turns dropped until the reply has room, and how many.

    The room is `max_tokens`, at most half the context, as `microgpt chat` keeps it; counts are
    exact (BOS included) but for a text far over the budget (`tokens_over`). A last message
    that alone does not fit is the 400 any over-long prompt gets.
    """
    turns, user = chat_turns(messages)
    budget = model.max_model_len - min(max_tokens, model.max_model_len // 2)

    def count(text: str) -> int:
        return tokens_over(model, text, budget) or len(encode_text(model, text))

    dropped = fit_turns(turns, user, count, budget)
    if dropped is None:
        raise context_exceeded(model, str(count(render([], user))))
    return render(turns[dropped:], user), dropped


def encode_prompt(model: LoadedModel, prompt: str | Sequence[int]) -> list[int]:
    """Token ids of a text prompt (BOS first where the tokenizer has one), or the given ids, checked."""
    if isinstance(prompt, str):
        refuse_surely_too_long(model, prompt)
    ids = encode_text(model, prompt) if isinstance(prompt, str) else check_ids(model, prompt)
    if not ids:
        raise ApiError(
            400, "invalid_prompt", "the prompt is empty and this tokenizer has no BOS to start from"
        )
    if len(ids) > model.max_model_len:
        raise context_exceeded(model, str(len(ids)))
    return ids


def stop_token_ids(model: LoadedModel) -> list[int]:
    eos = model.tokenizer.eos_id
    return [] if eos is None else [eos]


def submit_choices(
    model: LoadedModel,
    metrics: InferenceMetrics,
    prompts: Sequence[list[int]],
    sampling: Sampling,
    *,
    default_max_tokens: int,
    max_tokens_cap: int,
    extra_stop: Sequence[str] = (),
    logprobs: int | None = None,
    strip_leading_space: bool = False,
) -> list[Generation]:
    """`sampling.n` generations per prompt (prompt-major, choice i seeded seed + i), all submitted now."""
    from microgpt.serving.engine import EngineError, QueueFullError

    base = sampling.to_params(
        default_max_tokens=default_max_tokens, cap=max_tokens_cap, stop_token_ids=stop_token_ids(model)
    )
    stop = [*base.stop, *extra_stop]
    generations: list[Generation] = []
    try:
        for ids in prompts:
            for i in range(sampling.n):
                params = base if base.seed is None else base.model_copy(update={"seed": base.seed + i})
                handle = _submit(model, ids, params, logprobs, QueueFullError, EngineError)
                generations.append(
                    Generation(
                        handle,
                        model.tokenizer,
                        model.id,
                        metrics,
                        stop=stop,
                        stop_token_ids=base.stop_token_ids,
                        strip_leading_space=strip_leading_space,
                        streams=lambda: model.engine.running,
                    )
                )
                metrics.prompt_tokens.labels(model.id).inc(handle.prompt_tokens)
    except BaseException:
        for g in generations:  # all or nothing: a 429 on choice 3 frees choices 1 and 2
            g.cancel()
        raise
    return generations


def _submit(
    model: LoadedModel,
    ids: list[int],
    params: SamplingParams,
    logprobs: int | None,
    queue_full: type[Exception],
    stopped: type[Exception],
):  # noqa: ANN202 - RequestHandle is imported lazily
    try:
        return model.engine.submit(ids, params, logprobs=logprobs)
    except stopped as e:  # the engine died between the lookup and now; the next request restarts it
        raise ApiError(503, "engine_stopped", f"model {model.id} is restarting; retry: {e}") from e
    except queue_full as e:
        retry = max(1, math.ceil(getattr(e, "retry_after", 1.0)))
        raise ApiError(
            429,
            "queue_full",
            f"model {model.id} has too many requests waiting; retry after {retry} s",
            headers={"Retry-After": str(retry)},
        ) from e
    except ValueError as e:  # the engine's own check: no room left in the context
        raise ApiError(400, "context_length_exceeded", " ".join(str(e).split())) from e


def usage(generations: Sequence[Generation], n: int = 1) -> Usage:
    """Prompt tokens once per prompt (generations are prompt-major, `n` per prompt), all generated tokens."""
    prompt = sum(g.prompt_tokens for g in generations[::n])
    completion = sum(g.completion_tokens for g in generations)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


async def collect_all(request: Request, generations: Sequence[Generation]) -> list[Outcome]:
    """Every generation's outcome; if the client disconnects first, all are cancelled (slots freed)."""
    gathered = asyncio.gather(*(g.collect() for g in generations))
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        racing: set[asyncio.Future[Any]] = {gathered, watcher}
        done, _ = await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        if gathered in done:
            return gathered.result()
        raise ApiError(499, "client_disconnected", "the client closed the connection")
    finally:
        watcher.cancel()
        if not gathered.done():
            gathered.cancel()
            for g in generations:
                g.cancel()


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so only a disconnect can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def merge(generations: Sequence[Generation]) -> AsyncIterator[tuple[int, Delta]]:
    """(choice index, delta) of all generations as they arrive; closing it cancels the rest."""
    if len(generations) == 1:
        async for delta in generations[0].deltas():
            yield 0, delta
        return
    queue: asyncio.Queue[tuple[int, Delta | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, generation: Generation) -> None:
        try:
            async for delta in generation.deltas():
                queue.put_nowait((index, delta))
        except Exception as e:
            queue.put_nowait((index, e))
        finally:
            queue.put_nowait((index, None))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(generations)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
