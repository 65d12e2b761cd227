"""What one cached forward pass says about a text: per-token loss and top-k guesses,
attention patterns, the logit lens and direct logit attribution.

    from microgpt.interpret import tokens, attention, logit_lens, attribution
    report = logit_lens(model, tokenizer, "ROMEO: But soft")

Each function takes text (or token ids), runs `run_with_cache` once and returns a
pydantic report (see `schemas`); given an `ActivationCache` instead, several of them share
one forward pass. Losses are in nats, surprisal in bits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from microgpt.generate import activation_device_and_dtype
from microgpt.interpret.cache import (
    ActivationCache,
    blocks,
    encode,
    linear_map,
    run_with_cache,
    token_id,
    token_string,
    token_strings,
    unembed,
)
from microgpt.interpret.schemas import (
    AttentionReport,
    AttributionReport,
    LensReport,
    TokenCandidate,
    TokensReport,
)
from microgpt.model import GPT
from microgpt.tokenizers import Tokenizer

Text = str | Sequence[int]


def cached(model: GPT, tokenizer: Tokenizer, text: Text | ActivationCache) -> ActivationCache:
    """The activations of `text`: the cache itself when given one, else one forward pass."""
    if isinstance(text, ActivationCache):
        return text
    return run_with_cache(model, encode(tokenizer, text, model))


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (T-1,) of each true next token under logits (T, V)."""
    return torch.nn.functional.cross_entropy(logits[:-1].float(), ids[1:], reduction="none")


def tokens(model: GPT, tokenizer: Tokenizer, text: Text | ActivationCache, *, top_k: int = 5) -> TokensReport:
    """Per-position loss and surprisal of the true next token, and the model's top-k guesses."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    cache = cached(model, tokenizer, text)
    probs = cache.logits.softmax(-1)
    top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    loss: list[float | None] = [*next_token_loss(cache.logits, cache.ids).tolist(), None]
    return TokensReport(
        tokens=token_strings(tokenizer, cache.ids),
        ids=cache.ids.tolist(),
        loss=loss,
        surprisal=[None if v is None else v / math.log(2) for v in loss],
        top_k=[
            [
                TokenCandidate(token=token_string(tokenizer, i), id=i, prob=p)
                for i, p in zip(ids, ps, strict=True)
            ]
            for ids, ps in zip(top.indices.tolist(), top.values.tolist(), strict=True)
        ],
        mean_loss=float(sum(loss[:-1]) / (len(loss) - 1)) if len(loss) > 1 else None,  # type: ignore[arg-type]
    )


def attention_entropy(patterns: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) over query rows of patterns (..., T, T) -> (...)."""
    p = patterns.float()
    return -(p * p.clamp_min(1e-30).log()).sum(-1).mean(-1)


def attention(model: GPT, tokenizer: Tokenizer, text: Text | ActivationCache) -> AttentionReport:
    """Attention probabilities of every head, [layer][head][query][key]."""
    cache = cached(model, tokenizer, text)
    return AttentionReport(
        tokens=token_strings(tokenizer, cache.ids),
        patterns=[p.tolist() for p in cache.patterns],
        entropy=[attention_entropy(p).tolist() for p in cache.patterns],
    )


def lens_logits(model: GPT, cache: ActivationCache) -> torch.Tensor:
    """(n_layer + 1, T, V): the stream entering block 0 and leaving each block, unembedded."""
    return unembed(model, torch.stack(cache.resid))


def logit_lens(model: GPT, tokenizer: Tokenizer, text: Text | ActivationCache) -> LensReport:
    """Each layer's top-1 token, and the probability and rank of the true next token."""
    cache = cached(model, tokenizer, text)
    probs = lens_logits(model, cache).softmax(-1)  # (L+1, T, V)
    top_prob, top_id = probs.max(-1)
    nxt = cache.ids[1:]
    true_prob = probs[:, :-1].gather(-1, nxt[None, :, None].expand(probs.shape[0], -1, 1))  # (L+1, T-1, 1)
    true_rank = (probs[:, :-1] > true_prob).sum(-1)  # strictly more likely tokens
    return LensReport(
        tokens=token_strings(tokenizer, cache.ids),
        layers=["embed", *(str(i) for i in range(model.config.n_layer))],
        top_token=[token_strings(tokenizer, row) for row in top_id],
        top_prob=top_prob.tolist(),
        true_rank=[[*row, None] for row in true_rank.tolist()],
        true_prob=[[*row, None] for row in true_prob[..., 0].tolist()],
    )


@torch.no_grad()
def attribution(
    model: GPT,
    tokenizer: Tokenizer,
    text: Text | ActivationCache,
    *,
    target: str | int | None = None,
    position: int = -1,
) -> AttributionReport:
    """Direct logit attribution of the embedding, each head and each MLP to `target`'s logit at `position`.

    The final norm is linear once its scale (1/std or 1/rms at this position) is frozen at
    the real run's value, so the parts sum exactly to the logit; LayerNorm's centring is
    applied to each part. `target` is a token id, a string that encodes to one token, or
    None for the model's own top guess at `position`.
    """
    cfg = model.config
    cache = cached(model, tokenizer, text)
    T = cache.ids.shape[0]
    if not -T <= position < T:
        raise ValueError(f"position {position} is outside the text's {T} tokens")
    pos = position % T
    if target is None:
        target_id = int(cache.logits[pos].argmax())
    else:
        target_id = token_id(tokenizer, target, cfg.vocab_size)
    final = cache.resid[-1][pos]  # (C,)
    norm = model.norm_f
    gain = torch.ones_like(final)
    offset = torch.zeros_like(final)
    scale = torch.ones((), device=final.device)
    centre = False
    if norm is not None:
        centre = norm.kind == "layernorm"
        x = final - final.mean() if centre else final
        scale = 1.0 / ((x.square().mean() + norm.eps).sqrt())
        gain = norm.weight.float() if norm.weight is not None else gain
        offset = norm.bias.float() if norm.bias is not None else offset
    dtype = activation_device_and_dtype(model)[1]
    w_u, _ = linear_map(model.lm_head, cfg.n_embd, final.to(dtype))
    direction = gain * w_u[:, target_id] * scale  # (C,)

    def through(v: torch.Tensor) -> float:
        v = v - v.mean(-1, keepdim=True) if centre else v
        return float(v @ direction)

    heads, mlps = [], []
    bias = float(offset @ w_u[:, target_id])
    for layer, block in enumerate(blocks(model)):
        w_o, b_o = linear_map(block.attn.proj, cfg.n_head * cfg.head_size, final.to(dtype))
        z = cache.head_z[layer][pos]  # (H, D)
        w_heads = w_o.view(cfg.n_head, cfg.head_size, cfg.n_embd)
        heads.append([through(z[h] @ w_heads[h]) for h in range(cfg.n_head)])
        bias += through(b_o)
        mlps.append(through(cache.mlp_out[layer][pos]))
    return AttributionReport(
        tokens=token_strings(tokenizer, cache.ids),
        target=token_string(tokenizer, target_id),
        target_id=target_id,
        position=pos,
        embed=through(cache.resid[0][pos]),
        heads=heads,
        mlps=mlps,
        bias=bias,
        total=float(cache.logits[pos, target_id]),
    )
