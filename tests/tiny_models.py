"""The tiny architecture families the model, generation, native-kernel, quantization and
checkpoint tests share: each shape the model supports, small enough for a unit test.

Each test module picks the families it needs (and adjusts one field where its subject
needs it, e.g. a longer context for generation), so a new architecture option is added
to the families here once. `transformers_checkpoint` is the other side of the import
tests: the GPT-2 and Llama shapes as `transformers` itself builds and saves them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from microgpt.config import GPTConfig
from microgpt.zoo import get_preset

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from microgpt.tokenizers import HFTokenizer

MICROGPT = get_preset("micro").model  # microgpt's own preset, already tiny
GPT2 = GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=32, bias=True, mlp="gelu_tanh")
# Llama-shaped: RoPE, RMSNorm, SwiGLU, grouped-query attention, qk-norm, an untied head.
LLAMA = GPTConfig(
    vocab_size=50, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, position="rope",
    norm="rmsnorm", mlp="swiglu", tie_embeddings=False, qk_norm=True,
)  # fmt: skip
# Multi-query attention (one KV head), squared-ReLU MLP, RMSNorm without a gain.
RELU2_MQA = GPTConfig(
    vocab_size=50, block_size=32, n_layer=2, n_head=4, n_kv_head=1, n_embd=32, mlp="relu2",
    norm="rmsnorm", norm_gain=False,
)  # fmt: skip
# Sizes no kernel's vector width divides, no final norm, a normed embedding.
ODD_SIZES = GPTConfig(
    vocab_size=37, block_size=20, n_layer=2, n_head=3, n_embd=24, mlp="relu2", mlp_hidden=50,
    norm="rmsnorm", norm_gain=False, final_norm=False, embed_norm=True,
)  # fmt: skip
# A product over more than 1,024 inputs: AVX2's int8 sums leave int32 every 1,024 of them.
WIDE_MLP = GPTConfig(vocab_size=50, block_size=12, n_layer=1, n_head=2, n_embd=32, mlp_hidden=1100)


def transformers_checkpoint(arch: str, path: Path, tokenizer: HFTokenizer | None = None) -> PreTrainedModel:
    """Save to `path` what `transformers` builds for `arch` ("gpt2" or "llama"), every weight
    (gains, biases) perturbed, and return the model.

    With `tokenizer` (a kind transformers can hold, e.g. byte-level BPE) the model's vocabulary
    and BOS/EOS ids are the tokenizer's, and transformers' `PreTrainedTokenizerFast` saves it
    beside the weights, as a user's checkpoint directory would hold it; without one the
    vocabulary has 60 ids and no tokenizer files.
    """
    import torch
    import transformers

    roles = ("bos", "eos", "pad")
    ids = {} if tokenizer is None else {f"{r}_token_id": getattr(tokenizer, f"{r}_id") for r in roles}
    vocab = 60 if tokenizer is None else tokenizer.vocab_size
    torch.manual_seed(1)
    model: PreTrainedModel
    if arch == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=vocab,
            n_positions=32,
            n_embd=32,
            n_layer=2,
            n_head=4,
            activation_function="gelu_new",
            **ids,
        )
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=32,
            **ids,
        )
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval().save_pretrained(path)
    if tokenizer is not None:
        specials = {
            f"{role}_token": tokenizer.backend.id_to_token(i)
            for role in (*roles, "unk")
            if (i := getattr(tokenizer, f"{role}_id")) is not None
        }
        backend = type(tokenizer.backend).from_str(tokenizer.backend.to_str())  # transformers edits its own
        transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **specials).save_pretrained(path)
    return model


def transformers_greedy(model: PreTrainedModel, ids: list[int], new_tokens: int) -> list[int]:
    """transformers' own greedy continuation of `ids`: the new token ids only."""
    import torch

    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=new_tokens,
            do_sample=False,
        )
    return out[0, len(ids) :].tolist()
