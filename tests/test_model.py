"""The GPT module: every preset builds and runs, and its independent paths agree.

Tolerances: float64 comparisons use 1e-10 relative (only summation order differs);
the presets run in float32 at reduced depth/width for speed, shape unchanged.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import GPT2, LLAMA, MICROGPT, RELU2_MQA

from microgpt.config import GPTConfig
from microgpt.kv_cache import KVCache
from microgpt.model import GPT
from microgpt.zoo import PRESETS, get_preset

FAMILIES = {"microgpt": MICROGPT, "gpt2": GPT2, "llama": LLAMA, "relu2-mqa": RELU2_MQA}


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_and_trains_one_step(name: str) -> None:
    preset = PRESETS[name]
    # Same shape family, shrunk so the 100M presets run in a unit test.
    cfg = preset.model.updated(
        n_layer=min(preset.model.n_layer, 2),
        vocab_size=min(preset.model.vocab_size, 512),
        block_size=min(preset.model.block_size, 64),
    )
    torch.manual_seed(0)
    model = GPT(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 16, cfg.vocab_size)
    assert math.isfinite(loss.item())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_micro_matches_microgpt_parameter_count() -> None:
    assert GPT(get_preset("micro").model).num_params() == 4192


def test_full_size_parameter_counts() -> None:
    with torch.device("meta"):
        shakespeare = GPT(get_preset("shakespeare").model)
        gpt2 = GPT(get_preset("gpt2-small").model)
    # nanoGPT reports parameters without position embeddings: 10.65M and 123.65M.
    assert round(shakespeare.num_params(exclude_embeddings=True) / 1e6, 2) == 10.65
    assert round(gpt2.num_params(exclude_embeddings=True) / 1e6, 2) == 123.65


@pytest.mark.parametrize("family", list(FAMILIES))
def test_explicit_attention_matches_sdpa(family: str) -> None:
    torch.manual_seed(0)
    model = GPT(FAMILIES[family]).double().eval()
    idx = torch.randint(0, model.config.vocab_size, (2, 12))
    h_sdpa, _ = model.hidden(idx)
    h_explicit, maps = model.hidden(idx, need_weights=True)
    torch.testing.assert_close(h_explicit, h_sdpa, rtol=1e-10, atol=1e-12)
    assert len(maps) == model.config.n_layer
    probs = maps[0]
    assert probs.shape == (2, model.config.n_head, 12, 12)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, model.config.n_head, 12, dtype=torch.float64))
    assert torch.all(probs.triu(1) == 0), "attention must be causal"


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_cpu_training_attention_has_sdpa_gradients(family: str) -> None:
    """Training on the CPU takes the explicit attention path (causal bias, no dropout here):
    its gradients are SDPA's."""
    torch.manual_seed(0)
    model = GPT(FAMILIES[family]).double()
    idx = torch.randint(0, model.config.vocab_size, (2, 12))
    grads = []
    for training in (True, False):
        model.train(training)
        model.zero_grad()
        model(idx, idx).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for explicit, sdpa in zip(*grads):
        torch.testing.assert_close(explicit, sdpa, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_kv_cache_prefill_then_steps_matches_full_forward(family: str) -> None:
    torch.manual_seed(0)
    model = GPT(FAMILIES[family]).double().eval()
    cfg = model.config
    idx = torch.randint(0, cfg.vocab_size, (3, cfg.block_size))
    full = model(idx).logits
    cache = KVCache(cfg, 3, dtype=torch.float64)
    prefill = 5
    logits = [model(idx[:, :prefill], kv_cache=cache).logits]
    cache.advance(prefill)
    for t in range(prefill, cfg.block_size):
        logits.append(model(idx[:, t : t + 1], kv_cache=cache).logits)
        cache.advance(1)
    torch.testing.assert_close(torch.cat(logits, dim=1), full, rtol=1e-10, atol=1e-12)


def test_kv_cache_rows_keep_their_own_lengths() -> None:
    """Right-padded prefill: each row continues from its own length, as if alone."""
    torch.manual_seed(0)
    model = GPT(FAMILIES["llama"]).double().eval()
    a, b = [1, 2, 3, 4, 5, 6], [7, 8]
    cache = KVCache(model.config, 2, dtype=torch.float64)
    model(torch.tensor([a, b + [0] * 4]), kv_cache=cache)
    cache.advance(torch.tensor([len(a), len(b)]))
    step = model(torch.tensor([[9], [9]]), kv_cache=cache).logits[:, -1]
    alone_a = model(torch.tensor([a + [9]])).logits[0, -1]
    alone_b = model(torch.tensor([b + [9]])).logits[0, -1]
    torch.testing.assert_close(step[0], alone_a, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(step[1], alone_b, rtol=1e-10, atol=1e-12)


def test_gqa_equals_multi_head_with_repeated_kv_weights() -> None:
    """A GQA model is a multi-head model whose KV heads are copied to each query group."""
    torch.manual_seed(0)
    gqa_cfg = FAMILIES["llama"].updated(qk_norm=False)
    gqa = GPT(gqa_cfg).double()
    mha = GPT(gqa_cfg.updated(n_kv_head=None)).double()
    state = gqa.state_dict()
    hs, groups = gqa_cfg.head_size, gqa_cfg.n_head // gqa_cfg.kv_heads

    def repeat(m: torch.Tensor) -> torch.Tensor:
        return m.view(gqa_cfg.kv_heads, hs, -1).repeat_interleave(groups, 0).reshape(-1, m.shape[1])

    for i in range(gqa_cfg.n_layer):
        w = state[f"blocks.{i}.attn.qkv.weight"]
        q, k, v = w.split([gqa_cfg.n_embd, gqa_cfg.kv_heads * hs, gqa_cfg.kv_heads * hs])
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat([q, repeat(k), repeat(v)])
    mha.load_state_dict(state)
    idx = torch.randint(0, gqa_cfg.vocab_size, (2, 10))
    torch.testing.assert_close(gqa(idx).logits, mha(idx).logits, rtol=1e-10, atol=1e-12)


def test_tied_head_shares_the_embedding() -> None:
    model = GPT(FAMILIES["gpt2"])
    assert model.lm_head.weight is model.wte.weight
    assert GPT(FAMILIES["llama"]).lm_head.weight is not GPT(FAMILIES["llama"]).wte.weight


def test_init_scheme() -> None:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=64, block_size=64, n_layer=8, n_head=4, n_embd=256, bias=True)
    model = GPT(cfg)
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].attn.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert torch.all(model.blocks[0].attn.qkv.bias == 0)
    assert torch.all(model.blocks[0].attn_norm.weight == 1)
    micro = GPT(get_preset("micro").model)
    assert micro.blocks[0].attn.proj.weight.std().item() == pytest.approx(0.08, rel=0.15)


def test_flops_and_mfu() -> None:
    model = GPT(get_preset("shakespeare").model)
    n = 10_745_088 - 256 * 384 - 65 * 384 + 65 * 384  # no embedding lookups; tied head counted once
    assert model.flops_per_token() == 6 * n + 12 * 6 * 384 * 256
    assert model.flops_per_token(training=False) == 2 * n + 4 * 6 * 384 * 256
    assert model.mfu(1000.0, peak_flops=model.flops_per_token() * 2000.0) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_embd", 30, "divisible by n_head"),
        ("n_kv_head", 3, "divisible by n_kv_head"),
        ("dropout", 1.0, "dropout"),
        ("vocab_size", 0, "vocab_size"),
        ("mlp", "tanh", "mlp"),
        ("n_layers", 3, "n_layers"),
    ],
)
def test_invalid_config_names_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FAMILIES["gpt2"].updated(**{field: value})


def test_sequence_longer_than_context_is_refused() -> None:
    model = GPT(FAMILIES["gpt2"])
    with pytest.raises(ValueError, match="exceeds the context"):
        model(torch.zeros(1, 33, dtype=torch.long))
