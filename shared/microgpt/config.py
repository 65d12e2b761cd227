"""Typed, JSON-serialisable configs: the model's shape and the training recipe.

A config is plain data. It passes unchanged through the CLI, Celery jobs, registry
metadata, `config.json` and the UI, so every field is a JSON value and unknown keys
are refused (a typo in an override is an error naming the key, never ignored).
Derived values (head size, MLP width, KV heads) live here as properties, in one place.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    def updated(self, **overrides: object) -> Self:
        """A validated copy with some fields replaced (unknown keys are refused)."""
        return type(self).model_validate({**self.model_dump(), **overrides})


class GPTConfig(_Strict):
    """The architecture: microgpt, nanoGPT/GPT-2 and Llama shapes are all points in this space."""

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    n_kv_head: int | None = None  # None means n_head (plain multi-head attention)
    mlp_hidden: int | None = None  # None means 4*n_embd, or 8/3*n_embd rounded for SwiGLU
    position: Literal["learned", "rope"] = "learned"
    rope_base: float = 10000.0
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_gain: bool = True  # learnable scale in every norm
    norm_eps: float = 1e-5
    embed_norm: bool = False  # a norm right after the embedding (microgpt has one)
    final_norm: bool = True  # a norm before the LM head (microgpt has none)
    mlp: Literal["gelu", "gelu_tanh", "relu", "relu2", "swiglu"] = "gelu"
    qk_norm: bool = False
    tie_embeddings: bool = True
    bias: bool = False
    dropout: float = 0.0
    init_std: float = 0.02
    scale_residual_init: bool = True  # GPT-2: residual projections get std/sqrt(2*n_layer)

    @model_validator(mode="after")
    def _check(self) -> GPTConfig:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.kv_heads})")
        if self.position == "rope" and self.head_size % 2:
            raise ValueError(f"rotary positions need an even head size, got {self.head_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.mlp_hidden is not None and self.mlp_hidden < 1:
            raise ValueError(f"mlp_hidden must be >= 1, got {self.mlp_hidden}")
        return self

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden_size(self) -> int:
        """MLP width; SwiGLU keeps the parameter count of a 4x MLP (Llama's 8/3 rule, to 64)."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.mlp == "swiglu":
            return 64 * -(-int(8 * self.n_embd / 3) // 64)
        return 4 * self.n_embd


# What supervised finetuning sets on a recipe (`microgpt finetune --sft`, the trainer's sft jobs):
# the loss on assistant turns of whole conversations, from the first step.
SFT_SETTINGS: dict[str, object] = {"loss_on": "assistant", "data_mode": "documents", "pretrain_fraction": 0.0}


class TrainConfig(_Strict):
    """The recipe a preset carries; the training loop reads it."""

    max_steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    optimizer: Literal["adam", "adamw"] = "adamw"
    lr: float = 1e-3
    min_lr: float = 0.0
    warmup_steps: int = 0
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 disables clipping
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast matmuls, fp32 master weights
    data_mode: Literal["documents", "stream"] = "stream"
    # "assistant": supervised finetuning on conversations (messages JSONL): the loss falls on what
    # the assistant writes only, after the first `pretrain_fraction` of the steps, which train on
    # every token of the same conversations (language modelling before finetuning, one run).
    loss_on: Literal["all", "assistant"] = "all"
    pretrain_fraction: float = 0.0
    dataset: str | None = None
    tokenizer: str = "char"
    eval_interval: int = 250
    eval_steps: int = 20
    # Stop after this many evaluations in a row without a new best val loss (0: never).
    early_stopping_patience: int = 0
    early_stopping_min_delta: float = 0.0  # an improvement smaller than this does not count
    compile: bool = False  # torch.compile the model (Inductor); numerics may differ in the last bits
    # Record microgpt.interpret.probe (induction score, attention entropy) in metrics.jsonl every
    # this many steps (0: never), to see when induction heads form; it leaves the losses unchanged.
    interpret_every: int = 0
    seed: int = 1337

    @property
    def pretrain_steps(self) -> int:
        """Steps that train on every token before loss_on=assistant applies (0 without it)."""
        return int(self.pretrain_fraction * self.max_steps)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        for name in ("max_steps", "batch_size", "grad_accum", "eval_interval", "eval_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.interpret_every < 0:
            raise ValueError(f"interpret_every must be >= 0, got {self.interpret_every}")
        if self.early_stopping_patience < 0 or self.early_stopping_min_delta < 0:
            raise ValueError("early_stopping_patience and early_stopping_min_delta must be >= 0")
        if not 0.0 <= self.pretrain_fraction < 1.0:
            raise ValueError(f"pretrain_fraction must be in [0, 1), got {self.pretrain_fraction}")
        if self.pretrain_fraction and self.loss_on != "assistant":
            raise ValueError(
                "pretrain_fraction comes before training on assistant turns: set loss_on=assistant"
            )
        if self.loss_on == "assistant" and self.data_mode != "documents":
            raise ValueError("loss_on=assistant reads whole conversations: set data_mode=documents")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr} min_lr={self.min_lr}")
        return self
