"""microgpt.interpret against TransformerLens: the same weights loaded into TransformerLens'
own transformer (no weight processing: nothing folded or centred) give the same attention
patterns, per-token loss and logit-lens values within 1e-5 in float32.

TransformerLens 4 builds its native model from a `TransformerBridgeConfig` and exposes
`run_with_cache` hooks (`blocks.{l}.attn.hook_pattern`, `blocks.{l}.hook_resid_post`).
Its rotary embedding rotates adjacent pairs (GPT-J style) where ours rotates halves
(HF Llama), so W_Q and W_K rows are permuted within each head; biases it has and we
do not are zeros.
"""

from __future__ import annotations

import pytest
import torch

from microgpt import interpret
from microgpt.config import GPTConfig
from microgpt.interpret.readouts import lens_logits, next_token_loss
from microgpt.model import GPT

native = pytest.importorskip("transformer_lens.model_bridge.sources.native")

TOL = 1e-5
# A GPT-2-shaped model (learned positions, LayerNorm, GELU) and a Llama-shaped one
# (rotary, RMSNorm, SwiGLU, grouped-query attention, untied head).
LEARNED = GPTConfig(vocab_size=40, block_size=24, n_layer=3, n_head=4, n_embd=32, mlp="gelu", init_std=0.3)
ROTARY = GPTConfig(
    vocab_size=40, block_size=24, n_layer=3, n_head=4, n_kv_head=2, n_embd=32, position="rope",
    norm="rmsnorm", mlp="swiglu", tie_embeddings=False, init_std=0.3,
)  # fmt: skip


def rotate_pairs(w: torch.Tensor, head_size: int) -> torch.Tensor:
    """Rows of a q or k projection from rotate-half order to adjacent-pair order, per head."""
    half = head_size // 2
    order = torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).flatten()  # 0, h, 1, h+1, ...
    return w.view(-1, head_size, w.shape[-1])[:, order].reshape(w.shape)


def transformer_lens_twin(model: GPT) -> torch.nn.Module:
    """A TransformerLens bridge over its native model, holding `model`'s weights."""
    cfg = model.config
    rope = cfg.position == "rope"
    bridge = native.boot(
        {
            "d_model": cfg.n_embd,
            "d_head": cfg.head_size,
            "n_heads": cfg.n_head,
            "n_key_value_heads": cfg.kv_heads,
            "n_layers": cfg.n_layer,
            "n_ctx": cfg.block_size,
            "d_vocab": cfg.vocab_size,
            "d_mlp": cfg.hidden_size,
            "act_fn": "silu" if cfg.mlp == "swiglu" else cfg.mlp,
            "gated_mlp": cfg.mlp == "swiglu",
            "normalization_type": "RMS" if cfg.norm == "rmsnorm" else "LN",
            "eps": cfg.norm_eps,
            "positional_embedding_type": "rotary" if rope else "standard",
            "rotary_base": int(cfg.rope_base),
            "rotary_dim": cfg.head_size,
            "final_rms": cfg.norm == "rmsnorm",
        },
        dtype=torch.float32,
    )
    ours = model.state_dict()
    twin = bridge.original_model
    state: dict[str, torch.Tensor] = {}
    q_w, kv_w = cfg.n_head * cfg.head_size, cfg.kv_heads * cfg.head_size
    state["tok_embed.weight"] = ours["wte.weight"]
    state["head.weight"] = ours["lm_head.weight"]
    if not rope:
        state["pos.weight"] = ours["wpe.weight"]
    for i in range(cfg.n_layer):
        b, t = f"blocks.{i}.", f"layers.{i}."
        q, k, v = ours[b + "attn.qkv.weight"].split([q_w, kv_w, kv_w])
        if rope:
            q, k = rotate_pairs(q, cfg.head_size), rotate_pairs(k, cfg.head_size)
        state.update({t + "attn.q.weight": q, t + "attn.k.weight": k, t + "attn.v.weight": v})
        state[t + "attn.o.weight"] = ours[b + "attn.proj.weight"]
        state[t + "ln1.weight"] = ours[b + "attn_norm.weight"]
        state[t + "ln2.weight"] = ours[b + "mlp_norm.weight"]
        if cfg.mlp == "swiglu":
            gate, up = ours[b + "mlp.fc.weight"].chunk(2)
            state.update({t + "mlp.gate.weight": gate, t + "mlp.in.weight": up})
            state[t + "mlp.out.weight"] = ours[b + "mlp.proj.weight"]
        else:
            # The bridge also names fc_in and fc_out `in` and `out`.
            for fc in ("fc_in", "in"):
                state[t + f"mlp.{fc}.weight"] = ours[b + "mlp.fc.weight"]
            for proj in ("fc_out", "out"):
                state[t + f"mlp.{proj}.weight"] = ours[b + "mlp.proj.weight"]
    state["ln_out.weight"] = ours["norm_f.weight"]
    # The bridge wraps each native module, so every tensor appears under several keys
    # carrying `._original_component`; all of them share storage. Biases we lack become 0.
    with torch.no_grad():
        for key, tensor in twin.state_dict(keep_vars=True).items():
            name = key.replace("._original_component", "")
            if name in state:
                tensor.copy_(state[name])
            elif name.endswith(".bias"):
                tensor.zero_()
            else:
                raise AssertionError(f"no microgpt weight for TransformerLens' {name}")
    if rope:
        # Its angles are computed in float32 and ours in float64, which alone moves the
        # logits by ~1e-5 at the far positions: give it our tables, in adjacent-pair layout.
        half = cfg.head_size // 2
        with torch.no_grad():
            for module in twin.modules():
                if hasattr(module, "cos_cached"):
                    module.cos_cached.copy_(model.rope_cos[:, :half].repeat_interleave(2, dim=-1))
                    module.sin_cached.copy_(model.rope_sin[:, :half].repeat_interleave(2, dim=-1))
    return bridge


@pytest.fixture(params=[LEARNED, ROTARY], ids=["learned-layernorm-gelu", "rotary-rmsnorm-swiglu-gqa"])
def pair(request: pytest.FixtureRequest) -> tuple[GPT, torch.nn.Module]:
    torch.manual_seed(0)
    model = GPT(request.param).eval()
    return model, transformer_lens_twin(model)


def test_attention_loss_and_lens_match_transformer_lens(pair: tuple[GPT, torch.nn.Module]) -> None:
    model, bridge = pair
    ids = torch.randint(
        model.config.vocab_size, (model.config.block_size,), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        tl_logits, tl_cache = bridge.run_with_cache(ids[None])
    ours = interpret.run_with_cache(model, ids)
    # Logits of size ~5 are float32 sums in a different order: each side is ~1e-5 from a
    # float64 run, so they agree relatively; the three readouts below agree absolutely.
    torch.testing.assert_close(ours.logits, tl_logits[0], rtol=TOL, atol=TOL)

    for layer in range(model.config.n_layer):
        theirs = tl_cache[f"blocks.{layer}.attn.hook_pattern"][0]
        assert (theirs - ours.patterns[layer]).abs().max() < TOL, layer

    tl_loss = torch.nn.functional.cross_entropy(tl_logits[0, :-1], ids[1:], reduction="none")
    assert (tl_loss - next_token_loss(ours.logits, ids)).abs().max() < TOL

    twin = bridge.original_model
    with torch.no_grad():
        tl_lens = torch.stack(
            [
                twin.head(twin.ln_out(tl_cache[f"blocks.{layer}.hook_resid_post"][0]))
                for layer in range(model.config.n_layer)
            ]
        ).log_softmax(-1)
    our_lens = lens_logits(model, ours)[1:].log_softmax(-1)  # [0] is the stream before block 0
    assert (tl_lens - our_lens).abs().max() < TOL
