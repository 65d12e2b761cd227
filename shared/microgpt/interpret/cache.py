"""One forward pass with every activation kept: the residual stream, attention patterns,
each head's output and each MLP's output, for the analyses in this package.

Forward hooks on the model's own modules (`blocks.{l}`, `blocks.{l}.attn.proj`,
`blocks.{l}.mlp`) record what the unmodified forward computes, so a quantized or bf16
model is inspected exactly as it serves; the attention probabilities come from the
model's explicit attention path (`need_weights=True`). Weights are read by applying a
module to the identity rather than by reading `.weight`, so an int8/int4 layer gives
the matrix it really multiplies by.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from microgpt.generate import activation_device_and_dtype
from microgpt.model import GPT, Block
from microgpt.tokenizers import Tokenizer

Hook = TypeVar("Hook", bound=Callable[..., Any])


def this_thread_only(hook: Hook) -> Hook:
    """A hook that acts only on forward passes run by the thread that made it.

    A server's batch engine may run the same modules in another thread meanwhile; its
    forward passes must neither be recorded nor patched.
    """
    owner = threading.get_ident()

    @functools.wraps(hook)
    def guarded(*args: Any) -> Any:
        return hook(*args) if threading.get_ident() == owner else None

    return guarded  # type: ignore[return-value]


@dataclass
class ActivationCache:
    """Activations of one sequence, in float32; T tokens, C channels, H heads of size D."""

    ids: torch.Tensor  # (T,)
    resid: list[torch.Tensor]  # n_layer + 1 of (T, C): entering block 0, then leaving each block
    patterns: list[torch.Tensor]  # n_layer of (H, T, T)
    head_z: list[torch.Tensor]  # n_layer of (T, H, D): each head's mix of values, before attn.proj
    attn_out: list[torch.Tensor]  # n_layer of (T, C): attention's write into the stream
    mlp_out: list[torch.Tensor]  # n_layer of (T, C)
    logits: torch.Tensor  # (T, V)


def encode(tokenizer: Tokenizer, text: str | Sequence[int], model: GPT) -> torch.Tensor:
    """Token ids (T,) for text (or ids as given), refusing what the model cannot read."""
    ids = tokenizer.encode(text) if isinstance(text, str) else list(text)
    if not ids:
        raise ValueError("the text has no tokens")
    block = model.config.block_size
    if len(ids) > block:
        raise ValueError(f"the text is {len(ids)} tokens; this model reads at most {block}")
    vocab = model.config.vocab_size
    if not all(0 <= i < vocab for i in ids):
        raise ValueError(f"token ids must be in [0, {vocab})")
    return torch.tensor(ids, dtype=torch.long, device=activation_device_and_dtype(model)[0])


def token_string(tokenizer: Tokenizer, token_id: int) -> str:
    """One id decoded on its own, special tokens kept so every position has a label; ids a
    model's padded vocabulary has beyond the tokenizer's are shown as `<id>`."""
    if token_id >= tokenizer.vocab_size:
        return f"<{token_id}>"
    return tokenizer.decode([token_id], skip_special=False)


def token_id(tokenizer: Tokenizer, token: str | int, vocab: int) -> int:
    """A token named by id or by its text, which must encode to exactly one token of `vocab`."""
    if isinstance(token, int):
        if not 0 <= token < vocab:
            raise ValueError(f"token id {token} is outside the vocabulary [0, {vocab})")
        return token
    ids = tokenizer.encode(token)
    if len(ids) != 1:
        raise ValueError(f"{token!r} is {len(ids)} tokens; give one token")
    return ids[0]


def token_strings(tokenizer: Tokenizer, ids: Sequence[int] | torch.Tensor) -> list[str]:
    return [token_string(tokenizer, int(i)) for i in ids]


def blocks(model: GPT) -> list[Block]:
    """The model's blocks as a list (`model.blocks` iterates as `Block`s)."""
    return list(model.blocks)


@torch.no_grad()
def linear_map(module: nn.Module, in_features: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W^T (in, out), b (out,)) of an affine module, whatever its storage (float, int8, int4)."""
    eye = torch.eye(in_features, dtype=like.dtype, device=like.device)
    zero = torch.zeros(1, in_features, dtype=like.dtype, device=like.device)
    bias = module(zero)[0]
    return (module(eye) - bias).float(), bias.float()


@torch.no_grad()
def run_with_cache(model: GPT, ids: torch.Tensor) -> ActivationCache:
    """Run ids (T,) once through `model` (in eval mode) and keep every activation."""
    if ids.dim() != 1:
        raise ValueError("run_with_cache takes one sequence of ids, shape (T,)")
    cfg = model.config
    T = ids.shape[0]
    resid: list[torch.Tensor] = []
    head_z: list[torch.Tensor] = []
    attn_out: list[torch.Tensor] = []
    mlp_out: list[torch.Tensor] = []

    def block_in(_m: nn.Module, args: tuple[Any, ...]) -> None:
        resid.append(args[0][0].float())

    def block_out(_m: nn.Module, _args: tuple[Any, ...], out: tuple[torch.Tensor, Any]) -> None:
        resid.append(out[0][0].float())

    def proj_in(_m: nn.Module, args: tuple[Any, ...]) -> None:
        head_z.append(args[0][0].float().view(T, cfg.n_head, cfg.head_size))

    def attn_done(_m: nn.Module, _args: tuple[Any, ...], out: tuple[torch.Tensor, Any]) -> None:
        attn_out.append(out[0][0].float())

    def mlp_done(_m: nn.Module, _args: tuple[Any, ...], out: torch.Tensor) -> None:
        mlp_out.append(out[0].float())

    layers = blocks(model)
    handles = [layers[0].register_forward_pre_hook(this_thread_only(block_in))]
    for block in layers:
        handles += [
            block.register_forward_hook(this_thread_only(block_out)),
            block.attn.proj.register_forward_pre_hook(this_thread_only(proj_in)),
            block.attn.register_forward_hook(this_thread_only(attn_done)),
            block.mlp.register_forward_hook(this_thread_only(mlp_done)),
        ]
    was_training = model.training
    model.eval()
    try:
        h, maps = model.hidden(ids[None], need_weights=True)
        logits = model.lm_head(h)[0].float()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return ActivationCache(
        ids=ids,
        resid=resid,
        patterns=[m[0].float() for m in maps],
        head_z=head_z,
        attn_out=attn_out,
        mlp_out=mlp_out,
        logits=logits,
    )


@torch.no_grad()
def unembed(model: GPT, resid: torch.Tensor) -> torch.Tensor:
    """Logits (.., V) of residual-stream vectors (.., C): the final norm, then the LM head."""
    x = resid.to(activation_device_and_dtype(model)[1])
    if model.norm_f is not None:
        x = model.norm_f(x)
    return model.lm_head(x).float()
