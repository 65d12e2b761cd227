"""`POST /v1/interpret`: `microgpt.interpret` over HTTP, for any model the server can load.

Each request is bounded so that none can take the server down: the text by characters
(the schema) and by tokens (MAX_TOKENS, and the model's context), the attention payload
by values returned, activation patching by the tokens its batched forward passes process.
The analyses run in a worker thread (never on the event loop), one request at a time per
server, on the same weights the engine decodes with: `microgpt.interpret`'s hooks act only
on their own thread's forward passes, so generation running meanwhile is untouched.
"""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter

from microgpt import interpret
from microgpt.interpret.cache import ActivationCache, encode
from microgpt.model import GPT
from microgpt.tokenizers import Tokenizer
from services.common.errors import ApiError
from services.inference.deps import InterpretLimiterDep, PoolDep
from services.inference.schemas import InterpretRequest, InterpretResponse

router = APIRouter(tags=["interpret"])

MAX_TOKENS = 256  # of the text, whatever the model's context
MAX_ATTENTION_VALUES = 500_000  # layers x heads x tokens^2 floats in one response (~10 MB of JSON)
MAX_PATCH_TOKENS = 500_000  # tokens through the model for one patching grid


def invalid(detail: str) -> ApiError:
    return ApiError(400, "invalid_request", detail)


def check_work(body: InterpretRequest, model: GPT, tokenizer: Tokenizer) -> None:
    """Refuse a request over the bounds before any forward pass (400 naming the bound)."""
    cfg = model.config
    n = len(tokenizer.encode(body.text))
    if n > min(MAX_TOKENS, cfg.block_size):
        raise invalid(f"text is {n} tokens; at most {min(MAX_TOKENS, cfg.block_size)} for this model")
    if "attention" in body.analyses and cfg.n_layer * cfg.n_head * n * n > MAX_ATTENTION_VALUES:
        raise invalid(
            f"attention for {n} tokens over {cfg.n_layer} layers x {cfg.n_head} heads is more than "
            f"{MAX_ATTENTION_VALUES:,} values; send a shorter text"
        )
    if "patch" in body.analyses:
        if body.corrupted is None:
            raise invalid("patch needs `corrupted`, a text as many tokens long as `text`")
        patch_tokens = cfg.n_layer * (n + cfg.n_head) * n
        if patch_tokens > MAX_PATCH_TOKENS:
            raise invalid(
                f"patching {n} tokens needs {patch_tokens:,} token passes (at most {MAX_PATCH_TOKENS:,})"
            )
    if "heads" in body.analyses and 2 * body.seq_len > cfg.block_size:
        raise invalid(f"heads: 2 * seq_len ({2 * body.seq_len}) exceeds the context of {cfg.block_size}")


ONE_PASS = {"tokens", "attention", "lens", "attribution"}  # readouts of one cached forward pass


def run_analyses(body: InterpretRequest, model: GPT, tokenizer: Tokenizer) -> dict[str, Any]:
    """The reports asked for (runs in a worker thread); the readouts share one forward pass."""
    out: dict[str, Any] = {}
    seen: str | ActivationCache = body.text
    if ONE_PASS.intersection(body.analyses):
        seen = interpret.run_with_cache(model, encode(tokenizer, body.text, model))
    for analysis in body.analyses:
        if analysis == "tokens":
            out[analysis] = interpret.tokens(model, tokenizer, seen, top_k=body.top_k)
        elif analysis == "attention":
            out[analysis] = interpret.attention(model, tokenizer, seen)
        elif analysis == "lens":
            out[analysis] = interpret.logit_lens(model, tokenizer, seen)
        elif analysis == "attribution":
            out[analysis] = interpret.attribution(
                model, tokenizer, seen, target=body.target, position=body.position
            )
        elif analysis == "patch":
            assert body.corrupted is not None  # check_work refused it otherwise
            out[analysis] = interpret.patch(
                model, tokenizer, body.text, body.corrupted, answer=body.answer, foil=body.foil
            )
        elif analysis == "heads":
            out[analysis] = interpret.head_scores(
                model, seq_len=body.seq_len, batch=body.batch, seed=body.seed
            )
        else:
            out[analysis] = interpret.embeddings(model, tokenizer, limit=body.embeddings_limit)
    return out


@router.post("/v1/interpret", response_model=InterpretResponse, response_model_exclude_none=True)
async def interpret_text(
    body: InterpretRequest, pool: PoolDep, limiter: InterpretLimiterDep
) -> InterpretResponse:
    """Attention, per-token loss, the logit lens, attribution, patching, head scores or embeddings.

    Analyses not asked for are left out of the response. Errors are 400 `invalid_request`
    naming the bound or input at fault.
    """
    async with pool.lease(body.model) as loaded:
        model, tokenizer = loaded.serving.model, loaded.tokenizer
        try:
            check_work(body, model, tokenizer)
            reports = await anyio.to_thread.run_sync(run_analyses, body, model, tokenizer, limiter=limiter)
        except ValueError as e:  # text the tokenizer cannot encode; what microgpt.interpret refuses
            raise invalid(str(e)) from None
    return InterpretResponse(model=loaded.id, **reports)
