"""Activation patching: which activations of a clean run restore its answer in a corrupted one.

    report = patch(model, tokenizer, "When John and Mary went, John gave it to",
                                      "When John and Mary went, Mary gave it to")

The two texts must have the same number of tokens. Each patch copies one clean
activation into the corrupted run (the residual stream entering one block at one
position, or one head's output at every position) and measures how much of the clean
logit difference `answer - foil` at the last position comes back. All patches of a
layer run as one batch, one row per patch, via a forward pre-hook on the model's module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from microgpt.interpret.cache import (
    ActivationCache,
    blocks,
    encode,
    run_with_cache,
    this_thread_only,
    token_id,
    token_string,
    token_strings,
)
from microgpt.interpret.schemas import PatchReport
from microgpt.model import GPT
from microgpt.tokenizers import Tokenizer

Text = str | Sequence[int]
Patch = Callable[[torch.Tensor], torch.Tensor]  # rewrites a module's (B, T, .) input in place


@torch.no_grad()
def patched_logits(model: GPT, ids: torch.Tensor, module: nn.Module, rows: int, edit: Patch) -> torch.Tensor:
    """Last-position logits (rows, V) of `ids` (T,) run `rows` times, `module`'s input rewritten by `edit`."""

    def hook(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (edit(args[0].clone()), *args[1:])

    handle = module.register_forward_pre_hook(this_thread_only(hook))
    was_training = model.training
    model.eval()
    try:
        return model(ids[None].expand(rows, -1)).logits[:, -1].float()
    finally:
        handle.remove()
        model.train(was_training)


def residual_patches(model: GPT, clean: ActivationCache, corrupted_ids: torch.Tensor) -> torch.Tensor:
    """(n_layer, T, V) last-position logits with the clean stream patched into block l at position p."""
    T = corrupted_ids.shape[0]
    rows = torch.arange(T, device=corrupted_ids.device)
    out = []
    for layer, block in enumerate(blocks(model)):
        source = clean.resid[layer]  # (T, C)

        def edit(x: torch.Tensor, source: torch.Tensor = source) -> torch.Tensor:
            x[rows, rows] = source.to(x.dtype)  # row p patches position p
            return x

        out.append(patched_logits(model, corrupted_ids, block, T, edit))
    return torch.stack(out)


def head_patches(model: GPT, clean: ActivationCache, corrupted_ids: torch.Tensor) -> torch.Tensor:
    """(n_layer, n_head, V) last-position logits with head h's clean output (all positions) patched in."""
    cfg = model.config
    T, D = corrupted_ids.shape[0], cfg.head_size
    out = []
    for layer, block in enumerate(blocks(model)):
        source = clean.head_z[layer]  # (T, H, D)

        def edit(y: torch.Tensor, source: torch.Tensor = source) -> torch.Tensor:
            heads = y.view(cfg.n_head, T, cfg.n_head, D)  # row h patches head h
            for h in range(cfg.n_head):
                heads[h, :, h] = source[:, h].to(y.dtype)
            return y

        out.append(patched_logits(model, corrupted_ids, block.attn.proj, cfg.n_head, edit))
    return torch.stack(out)


def patch(
    model: GPT,
    tokenizer: Tokenizer,
    clean: Text,
    corrupted: Text,
    *,
    answer: str | int | None = None,
    foil: str | int | None = None,
) -> PatchReport:
    """Recovered fraction of the clean logit difference, per (layer, position) and per head.

    `answer` defaults to the clean run's top next token and `foil` to the corrupted run's
    (or the clean run's second choice when both runs agree).
    """
    clean_ids = encode(tokenizer, clean, model)
    bad_ids = encode(tokenizer, corrupted, model)
    if clean_ids.shape != bad_ids.shape:
        n_clean, n_bad = clean_ids.shape[0], bad_ids.shape[0]
        raise ValueError(f"the clean and corrupted texts must have as many tokens ({n_clean} vs {n_bad})")
    clean_cache = run_with_cache(model, clean_ids)
    bad_last = patched_logits(model, bad_ids, blocks(model)[0], 1, lambda x: x)[0]
    clean_last = clean_cache.logits[-1]
    vocab = model.config.vocab_size
    answer_id = token_id(tokenizer, answer, vocab) if answer is not None else int(clean_last.argmax())
    if foil is not None:
        foil_id = token_id(tokenizer, foil, vocab)
    else:
        foil_id = int(bad_last.argmax())
        if foil_id == answer_id:
            foil_id = int(clean_last.topk(2).indices[1])
    if foil_id == answer_id:
        raise ValueError("answer and foil are the same token")

    def diff(logits: torch.Tensor) -> torch.Tensor:
        return logits[..., answer_id] - logits[..., foil_id]

    clean_ld, bad_ld = float(diff(clean_last)), float(diff(bad_last))
    if abs(clean_ld - bad_ld) < 1e-6:
        raise ValueError("the clean and corrupted texts give the same logit difference; nothing to recover")

    def recovered(logits: torch.Tensor) -> list[list[float]]:
        return ((diff(logits) - bad_ld) / (clean_ld - bad_ld)).tolist()

    return PatchReport(
        clean_tokens=token_strings(tokenizer, clean_ids),
        corrupted_tokens=token_strings(tokenizer, bad_ids),
        answer=token_string(tokenizer, answer_id),
        foil=token_string(tokenizer, foil_id),
        clean_logit_diff=clean_ld,
        corrupted_logit_diff=bad_ld,
        residual=recovered(residual_patches(model, clean_cache, bad_ids)),
        heads=recovered(head_patches(model, clean_cache, bad_ids)),
    )
