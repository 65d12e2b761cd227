"""Native routes: `POST /generate` (a batch of prompts), `/tokenize`, `/detokenize` and `/admin/reload`.

`/generate` submits every prompt (times n) before awaiting any, so they decode in one batch;
results come back in prompt-major order. `/tokenize` and `/detokenize` use vLLM's field names.
`/admin/reload` re-resolves aliases now instead of at the next poll.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from services.inference.deps import MetricsDep, PoolDep, SettingsDep
from services.inference.schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    GenerateRequest,
    GenerateResponse,
    GenerateResult,
    ReloadRequest,
    ReloadResponse,
    ReloadResult,
    TokenizeRequest,
    TokenizeResponse,
)
from services.inference.submission import (
    check_ids,
    collect_all,
    encode_prompt,
    encode_text,
    submit_choices,
    usage,
)

router = APIRouter(tags=["native"])
admin = APIRouter(prefix="/admin", tags=["admin"])


@router.post("/generate", response_model=GenerateResponse)
async def generate(
    body: GenerateRequest, request: Request, pool: PoolDep, settings: SettingsDep, metrics: MetricsDep
) -> GenerateResponse:
    """Complete every prompt (n choices each); max_tokens defaults to the server cap."""
    started = time.perf_counter()
    async with pool.lease(body.model) as model:
        ids = [encode_prompt(model, p) for p in body.prompts]
        generations = submit_choices(
            model,
            metrics,
            ids,
            body,
            default_max_tokens=settings.inference_max_tokens,
            max_tokens_cap=settings.inference_max_tokens,
        )
        outcomes = await collect_all(request, generations)
    metrics.request_duration.labels(model.id).observe(time.perf_counter() - started)
    results = [
        GenerateResult(
            index=i,
            prompt_index=i // body.n,
            text=o.text,
            finish_reason="length" if o.finish_reason == "length" else "stop",
            prompt_tokens=g.prompt_tokens,
            completion_tokens=g.completion_tokens,
        )
        for i, (o, g) in enumerate(zip(outcomes, generations))
    ]
    return GenerateResponse(model=model.id, results=results, usage=usage(generations, body.n))


@router.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, pool: PoolDep) -> TokenizeResponse:
    model = await pool.get(body.model)
    tokens = encode_text(model, body.prompt, add_bos=body.add_special_tokens)
    return TokenizeResponse(tokens=tokens, count=len(tokens), max_model_len=model.max_model_len)


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, pool: PoolDep) -> DetokenizeResponse:
    model = await pool.get(body.model)
    return DetokenizeResponse(prompt=model.tokenizer.decode(check_ids(model, body.tokens)))


@admin.post("/reload", response_model=ReloadResponse)
async def reload(body: ReloadRequest, pool: PoolDep) -> ReloadResponse:
    """Load the version each alias now points at and swap it in; in-flight requests finish on the old one."""
    swaps = await pool.reload(body.model)
    return ReloadResponse(results=[ReloadResult(**vars(s)) for s in swaps])
