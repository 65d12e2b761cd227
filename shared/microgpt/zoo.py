"""The model zoo: named presets of model shape and training recipe, as plain data.

Each preset names its source. `vocab_size` is the vocabulary the preset is meant
for; training replaces it with the tokenizer's. Any field can be overridden:
`get_preset("names", model={"n_layer": 2}, train={"lr": 3e-4})`.

    microgpt zoo          # lists the presets with parameter counts
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from microgpt.config import GPTConfig, TrainConfig


@dataclass(frozen=True)
class Preset:
    name: str
    source: str
    model: GPTConfig
    train: TrainConfig

    def with_overrides(
        self, *, model: dict[str, Any] | None = None, train: dict[str, Any] | None = None
    ) -> Preset:
        """A copy with validated overrides; an unknown key is an error naming it."""
        return Preset(
            self.name, self.source, self.model.updated(**(model or {})), self.train.updated(**(train or {}))
        )


# Shared field overrides, validated by GPTConfig where they are spread in.
_MICROGPT_SHAPE: dict[str, Any] = dict(
    norm="rmsnorm",
    norm_gain=False,
    embed_norm=True,
    final_norm=False,
    mlp="relu",
    tie_embeddings=False,
    bias=False,
    init_std=0.08,
    scale_residual_init=False,
)
_NANOGPT_SHAKESPEARE: dict[str, Any] = dict(
    vocab_size=65, norm="layernorm", mlp="gelu", bias=False, tie_embeddings=True
)
# nanoGPT's char-level shape with rotary positions: a reply reads the question at a fixed distance
# back, wherever in the conversation it stands. vocab_size: the chat data's alphabet + BOS.
_CHAT_SHAPE: dict[str, Any] = {**_NANOGPT_SHAKESPEARE, "vocab_size": 97, "position": "rope"}
# What the chat presets train the same way: bf16, whole conversations, every token for the first
# 5% of the steps and then the replies only.
_CHAT_RECIPE: dict[str, Any] = dict(
    betas=(0.9, 0.99),
    weight_decay=0.1,
    precision="bf16",
    data_mode="documents",
    loss_on="assistant",
    pretrain_fraction=0.05,
    dataset="chat",
)
_LLAMA_SHAPE: dict[str, Any] = dict(
    position="rope",
    norm="rmsnorm",
    norm_eps=1e-5,
    mlp="swiglu",
    tie_embeddings=False,
    bias=False,
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "micro",
            "Karpathy's microgpt.py: 1 layer, 16 dims, 4 heads, plain Adam, one name per step",
            GPTConfig(vocab_size=27, block_size=16, n_layer=1, n_head=4, n_embd=16, **_MICROGPT_SHAPE),
            TrainConfig(
                max_steps=1000,
                batch_size=1,
                optimizer="adam",
                lr=0.01,
                min_lr=0.0,
                lr_schedule="linear",
                betas=(0.85, 0.99),
                eps=1e-8,
                weight_decay=0.0,
                grad_clip=0.0,
                data_mode="documents",
                dataset="names-32k",
                eval_interval=100,
            ),
        ),
        Preset(
            "names",
            "makemore's default transformer (4 layers, 4 heads, 64 dims, biases, untied head, tanh GELU) "
            "for names; trained with dropout 0.1 and a recipe that fits 5 minutes on 2 cores (2 DDP ranks)",
            GPTConfig(
                vocab_size=27,
                block_size=32,
                n_layer=4,
                n_head=4,
                n_embd=64,
                bias=True,
                tie_embeddings=False,
                mlp="gelu_tanh",
                dropout=0.1,
            ),  # fmt: skip
            TrainConfig(
                max_steps=13000,
                batch_size=96,
                lr=1.2e-2,
                min_lr=5e-5,
                warmup_steps=200,
                betas=(0.9, 0.99),
                weight_decay=0.1,
                data_mode="documents",
                dataset="names-32k",
                eval_interval=2600,
                eval_steps=33,  # 33 x 96 rows: the whole validation split (3,142 names)
            ),
        ),
        Preset(
            "shakespeare-cpu",
            "nanoGPT's train_shakespeare_char.py with its CPU overrides (README 'I only have a macbook')",
            GPTConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, **_NANOGPT_SHAKESPEARE),
            TrainConfig(
                max_steps=2000,
                batch_size=12,
                lr=1e-3,
                min_lr=1e-4,
                warmup_steps=100,
                betas=(0.9, 0.99),
                weight_decay=0.1,
                dataset="shakespeare",
                eval_interval=250,
            ),
        ),
        Preset(
            "shakespeare",
            "nanoGPT's config/train_shakespeare_char.py (the 10.7M 'baby GPT')",
            GPTConfig(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2, **_NANOGPT_SHAKESPEARE),
            TrainConfig(
                max_steps=5000,
                batch_size=64,
                lr=1e-3,
                min_lr=1e-4,
                warmup_steps=100,
                betas=(0.9, 0.99),
                weight_decay=0.1,
                dataset="shakespeare",
                eval_interval=250,
            ),
        ),
        Preset(
            "chat-tiny",
            "microgpt's chat recipe: nanoGPT's char-level shape (4 layers x 128) with RoPE, trained on the "
            "built-in conversation tasks: every token for the first 5% of the steps, then the replies only; "
            "bf16 autocast (1.9x fp32's speed on a CPU with bf16 dot products); 10 minutes on 2 CPU cores",
            GPTConfig(block_size=128, n_layer=4, n_head=4, n_embd=128, **_CHAT_SHAPE),
            TrainConfig(
                max_steps=2000,
                batch_size=32,  # rows of about 2.5 chained questions: ~80 replies a step
                lr=3e-3,
                min_lr=1e-4,
                warmup_steps=100,
                **_CHAT_RECIPE,
                eval_interval=500,
                eval_steps=10,
            ),
        ),
        Preset(
            "chat-small",
            "chat-tiny's recipe at the scale of nanoGPT's shakespeare 'baby GPT' (6 layers x 384): "
            "for a GPU, or a patient CPU",
            GPTConfig(block_size=128, n_layer=6, n_head=6, n_embd=384, **_CHAT_SHAPE),
            TrainConfig(
                max_steps=10000,
                batch_size=64,
                lr=1e-3,
                min_lr=1e-4,
                warmup_steps=200,
                **_CHAT_RECIPE,
                eval_interval=1000,
                eval_steps=20,
            ),
        ),
        Preset(
            "gpt2-small",
            "GPT-2 124M (Radford et al. 2019; nanoGPT's config/train_gpt2.py)",
            GPTConfig(
                vocab_size=50257,
                block_size=1024,
                n_layer=12,
                n_head=12,
                n_embd=768,
                bias=True,
                mlp="gelu_tanh",
                tie_embeddings=True,
            ),
            TrainConfig(
                max_steps=600000,
                batch_size=12,
                grad_accum=40,
                lr=6e-4,
                min_lr=6e-5,
                warmup_steps=2000,
                betas=(0.9, 0.95),
                weight_decay=0.1,
                tokenizer="bytelevel-bpe",
            ),
        ),
        Preset(
            "llama-tiny",
            "Llama 2 shape at llama2.c's 'stories' scale: RoPE, RMSNorm, SwiGLU, GQA, untied",
            GPTConfig(
                vocab_size=4096,
                block_size=512,
                n_layer=6,
                n_head=8,
                n_kv_head=2,
                n_embd=256,
                **_LLAMA_SHAPE,
            ),
            TrainConfig(
                max_steps=20000,
                batch_size=32,
                lr=5e-4,
                min_lr=5e-5,
                warmup_steps=1000,
                betas=(0.9, 0.95),
                weight_decay=0.1,
                tokenizer="bpe",
            ),
        ),
        Preset(
            "llama-small",
            "SmolLM/Llama shape at ~100M: 12 layers, 768 dims, 12 heads, 4 KV heads, untied",
            GPTConfig(
                vocab_size=16384,
                block_size=1024,
                n_layer=12,
                n_head=12,
                n_kv_head=4,
                n_embd=768,
                mlp_hidden=2048,
                **_LLAMA_SHAPE,
            ),
            TrainConfig(
                max_steps=100000,
                batch_size=16,
                grad_accum=8,
                lr=3e-4,
                min_lr=3e-5,
                warmup_steps=2000,
                betas=(0.9, 0.95),
                weight_decay=0.1,
                tokenizer="bpe",
            ),
        ),
    ]
}


def get_preset(
    name: str, *, model: dict[str, Any] | None = None, train: dict[str, Any] | None = None
) -> Preset:
    """The named preset with overrides applied; an unknown name lists the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name].with_overrides(model=model, train=train)
