"""The GPT model: one module for the microgpt, nanoGPT/GPT-2 and Llama families.

Every architectural choice is a field of `GPTConfig`; the code branches on those
fields, never on preset names. Attention runs through `scaled_dot_product_attention`
(flash/efficient kernels where the device has them) except on the explicit path,
which also returns the attention probabilities for interpretability.

Parameter names are stable (`blocks.0.attn.qkv.weight`, ...): checkpoints, the
pure-Python reference engine and the exporters all rely on them. q, k and v share
one fused projection and SwiGLU's gate and up share one, so decoding does one
matrix-vector product where three or two would do.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from microgpt.config import GPTConfig
from microgpt.dropout import Dropout, dropout
from microgpt.gelu import gelu_tanh
from microgpt.kv_cache import KVCache


class GPTOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, vocab_size)
    loss: torch.Tensor | None


class Norm(nn.Module):
    """LayerNorm or RMSNorm over the last dimension, with or without a learnable gain."""

    def __init__(self, dim: int, config: GPTConfig) -> None:
        super().__init__()
        self.kind, self.eps, self.dim = config.norm, config.norm_eps, dim
        self.weight = nn.Parameter(torch.ones(dim)) if config.norm_gain else None
        use_bias = config.norm == "layernorm" and config.norm_gain and config.bias
        self.bias = nn.Parameter(torch.zeros(dim)) if use_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "rmsnorm":
            return F.rms_norm(x, (self.dim,), self.weight, self.eps)
        return F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps)


def rope_tables(config: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (block_size, head_size) in the rotate-half layout of HF Llama."""
    half = config.head_size // 2
    inv_freq = config.rope_base ** -(torch.arange(half, dtype=torch.float64) / half)
    angles = torch.outer(torch.arange(config.block_size, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, nh, T, hs) by the angles of its positions; cos/sin are (B, 1, T, hs)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_size = config.n_head, config.kv_heads, config.head_size
        self.q_width = self.n_head * self.head_size
        self.kv_width = self.n_kv_head * self.head_size
        self.qkv = nn.Linear(config.n_embd, self.q_width + 2 * self.kv_width, bias=config.bias)
        self.proj = nn.Linear(self.q_width, config.n_embd, bias=config.bias)
        if config.qk_norm:
            self.q_norm = Norm(self.head_size, config)
            self.k_norm = Norm(self.head_size, config)
        self.qk_norm = config.qk_norm
        self.dropout = config.dropout

    def forward(
        self,
        x: torch.Tensor,
        *,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None,
        layer: int,
        positions: torch.Tensor | None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.q_width, self.kv_width, self.kv_width], dim=-1)
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, self.head_size).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.head_size).transpose(1, 2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        mask = None
        if cache is not None:
            assert positions is not None
            k, v = cache.write(layer, k, v, positions)  # (B, nkv, L, hs)
            mask = cache.attention_mask(positions)  # (B, 1, T, L)
        cpu_training = self.training and x.device.type == "cpu"
        if need_weights or cpu_training or (cache is not None and T == 1):
            # Decoding one token: plain math that torch.compile fuses into a single
            # loop, cheaper than a flash kernel for one query over a short cache.
            # Training on the CPU: SDPA's flash kernel has no dropout (it would take its
            # math path, with slow masks), and without dropout it measured no faster.
            y, probs = self._explicit_attention(q, k, v, mask)
        else:
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=mask is None,
                dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=self.n_kv_head != self.n_head,
            )
            probs = None
        y = y.transpose(1, 2).reshape(B, T, self.q_width)
        return self.proj(y), probs

    def _explicit_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax attention spelled out; returns the output and probabilities (B, nh, T, S).

        Query heads are grouped by the KV head they share (GQA), so k and v are
        broadcast rather than copied.
        """
        B, nh, T, hs = q.shape
        groups = nh // self.n_kv_head
        q = q.view(B, self.n_kv_head, groups, T, hs)
        k, v = k[:, :, None], v[:, :, None]  # (B, nkv, 1, S, hs)
        scale = 1.0 / math.sqrt(hs)
        if mask is None and groups == 1:
            # Causal, one query head per KV head (training): the scale and a constant -inf bias go
            # into the product itself (no pass over the (T, S) scores for either, none in backward).
            S = k.shape[-2]
            bias = causal_bias(T, S, q.dtype, q.device)
            scores = torch.baddbmm(bias, q.reshape(-1, T, hs), k.reshape(-1, S, hs).mT, alpha=scale)
            scores = scores.view(B, self.n_kv_head, 1, T, S)
        else:
            # Scaling q rather than the scores, and masking in place: two passes fewer over the
            # (T, S) scores, which dominate this path's memory traffic.
            scores = (q * scale) @ k.transpose(-2, -1)  # (B, nkv, g, T, S)
            if mask is None:
                scores += causal_bias(T, scores.shape[-1], scores.dtype, q.device)
            else:
                scores.masked_fill_(~mask[:, :, None], float("-inf"))  # mask (B, 1, T, S)
        probs = softmax(scores)
        # In v's dtype first (bf16 under autocast, as the product would cast it anyway): the
        # dropout pass then moves half the bytes of fp32 probabilities.
        y = (dropout(probs.to(v.dtype), self.dropout, self.training) @ v).view(B, nh, T, hs)
        return y, probs.view(B, nh, T, -1)


def softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension. Below 16 keys torch's CPU kernel leaves its vectorised path
    and takes 5x longer than at 16, forward and backward; spelled out, it does not (names: ~5% a step)."""
    if scores.shape[-1] >= 16 or scores.device.type != "cpu":
        return scores.softmax(dim=-1)
    exp = (scores - scores.amax(dim=-1, keepdim=True)).exp_()
    return exp / exp.sum(dim=-1, keepdim=True)


@functools.lru_cache(maxsize=8)  # a training run uses one shape (a few with trimmed padding)
def causal_bias(T: int, S: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(T, S): 0 where the last T of S positions may attend, -inf after each query's position."""
    hidden = torch.ones(T, S, dtype=torch.bool, device=device).triu(S - T + 1)
    return torch.zeros(T, S, dtype=dtype, device=device).masked_fill_(hidden, float("-inf"))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.kind, hidden = config.mlp, config.hidden_size
        fc_out = 2 * hidden if self.kind == "swiglu" else hidden  # SwiGLU: [gate; up]
        self.fc = nn.Linear(config.n_embd, fc_out, bias=config.bias)
        self.proj = nn.Linear(hidden, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.kind == "gelu":
            h = F.gelu(h)
        elif self.kind == "gelu_tanh":
            h = gelu_tanh(h)
        elif self.kind == "relu":
            h = F.relu(h)
        else:  # relu2
            h = F.relu(h).square()
        return self.proj(h)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.attn_norm = Norm(config.n_embd, config)
        self.attn = Attention(config)
        self.mlp_norm = Norm(config.n_embd, config)
        self.mlp = MLP(config)
        self.dropout = Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        *,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None,
        positions: torch.Tensor | None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, probs = self.attn(
            self.attn_norm(x),
            rope=rope,
            cache=cache,
            layer=self.layer,
            positions=positions,
            need_weights=need_weights,
        )
        x = x + self.dropout(a)
        x = x + self.dropout(self.mlp(self.mlp_norm(x)))
        return x, probs


class Blocks(nn.ModuleList):
    """The stack of blocks: an nn.ModuleList that tells a type checker its items are `Block`s.

    Iterating a plain ModuleList gives `Module`s, whose every attribute a checker then reads as
    `Tensor | Module`; this subclass changes nothing at run time (the same state_dict keys).
    """

    if TYPE_CHECKING:

        def __iter__(self) -> Iterator[Block]: ...


class GPT(nn.Module):
    wte: nn.Module  # an nn.Embedding, and lm_head an nn.Linear, until quantize swaps in int8/int4 ones
    lm_head: nn.Module
    rope_cos: torch.Tensor  # buffers, rope only
    rope_sin: torch.Tensor

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.position == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        else:
            cos, sin = rope_tables(config)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.embed_norm = Norm(config.n_embd, config) if config.embed_norm else None
        self.drop = Dropout(config.dropout)
        self.blocks = Blocks(Block(config, i) for i in range(config.n_layer))
        self.norm_f = Norm(config.n_embd, config) if config.final_norm else None
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The init scheme, in one place.

        Every matrix and embedding is N(0, init_std) (microgpt: 0.08, GPT-2: 0.02);
        with `scale_residual_init` the two projections that write into the residual
        stream get init_std / sqrt(2 * n_layer), so the stream's variance does not
        grow with depth (GPT-2). Biases start at 0 and norm gains at 1.
        """
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layer) if self.config.scale_residual_init else std
        for name, p in self.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0 if name.endswith("norm.weight") or name.endswith("norm_f.weight") else 0.0)
            elif name.endswith(("attn.proj.weight", "mlp.proj.weight")):
                nn.init.normal_(p, 0.0, residual_std)
            else:
                nn.init.normal_(p, 0.0, std)

    def hidden(
        self,
        idx: torch.Tensor,
        *,
        kv_cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Final hidden states (B, T, C) for token ids (B, T), and attention maps if asked.

        With a cache, the tokens continue each row at its own length; the caller
        advances the cache afterwards (see `microgpt.generate`).
        """
        B, T = idx.shape
        positions = kv_cache.positions(T) if kv_cache is not None else None
        if positions is None and self.config.block_size < T:
            raise ValueError(f"sequence of {T} tokens exceeds the context of {self.config.block_size}")
        pos = positions if positions is not None else torch.arange(T, device=idx.device)[None]
        x = self.wte(idx)
        rope = None
        if self.config.position == "learned":
            x = x + self.wpe(pos)
        else:
            rope = (self.rope_cos[pos][:, None], self.rope_sin[pos][:, None])  # (B|1, 1, T, hs)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = self.drop(x)
        maps = []
        for block in self.blocks:
            x, probs = block(x, rope=rope, cache=kv_cache, positions=positions, need_weights=need_weights)
            if probs is not None:
                maps.append(probs)
        if self.norm_f is not None:
            x = self.norm_f(x)
        return x, maps

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
    ) -> GPTOutput:
        """Logits (B, T, V) and, with targets (B, T), the mean cross-entropy (-1 is ignored)."""
        h, _ = self.hidden(idx, kv_cache=kv_cache)
        logits = self.lm_head(h)
        loss = None
        if targets is not None:
            # The loss is taken in at least fp32 (bf16 logits would lose the small probabilities).
            wide = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
            loss = F.cross_entropy(wide.flatten(0, 1), targets.flatten(), ignore_index=-1)
        return GPTOutput(logits, loss)

    def attention_maps(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Attention probabilities per layer, each (B, n_head, T, T), via the explicit path."""
        return self.hidden(idx, need_weights=True)[1]

    def num_params(self, *, exclude_embeddings: bool = False) -> int:
        """Parameter count, shared (tied) tensors once; optionally without position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings and self.config.position == "learned":
            n -= self.wpe.weight.numel()
        return n

    def flops_per_token(self, *, training: bool = True, context: int | None = None) -> float:
        """Matmul FLOPs per token (PaLM appendix B): 6N + 12·L·C·T to train, a third of it to infer.

        N counts the matrices a token actually multiplies through, so the embedding
        lookup is excluded and a tied LM head is counted once.
        """
        cfg = self.config
        n = sum(p.numel() for name, p in self.named_parameters() if not name.startswith(("wte.", "wpe.")))
        if cfg.tie_embeddings:
            n += cfg.vocab_size * cfg.n_embd
        T = context or cfg.block_size
        forward = 2 * n + 4 * cfg.n_layer * cfg.n_embd * T
        return 3 * forward if training else forward

    def mfu(self, tokens_per_second: float, peak_flops: float, *, training: bool = True) -> float:
        """Model FLOPs utilisation against a peak the caller measured or knows."""
        return self.flops_per_token(training=training) * tokens_per_second / peak_flops
