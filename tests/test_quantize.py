"""Weight-only quantization: the formats reconstruct their weights within their step sizes, and
the native int8 decode step computes what the dequantized weights compute.

Tolerances: int8 codes are within half a step (scale / 2) of the weight; int4 codes within half
a step plus the bf16 rounding of scale and zero (1% of a step). The native int8 step against the
eager model holding the dequantized weights in fp32: logits within 1e-4 of their range (its
inputs to int8 products are 16-bit fixed point) and the same greedy and seeded tokens. The eager
int8/int4 paths (torch's kernels on bf16-rounded inputs) within 2% of the logit range, as bf16.
"""

from __future__ import annotations

import pytest
import torch
from test_native import FAMILIES, make_model  # the same architecture families

from microgpt.generate import Engine, Request, generate
from microgpt.kv_cache import KVCache
from microgpt.model import GPT
from microgpt.native import NativeDecodeStep
from microgpt.quantize import (
    Int4Weight,
    Int8Weight,
    quantize_model,
    quantize_tensors,
    quantized_names,
    weight_bytes,
)
from microgpt.sampling import SamplingParams


def test_int8_codes_are_within_half_a_step() -> None:
    w = torch.randn(40, 70)
    q = Int8Weight.quantize(w)
    assert q.qdata.dtype == torch.int8 and q.scales.shape == (40,)
    assert ((q.dequantize() - w).abs() <= q.scales[:, None] / 2 + 1e-7).all()


@pytest.mark.parametrize("group_size", [32, 64])
def test_int4_codes_are_within_half_a_step(group_size: int) -> None:
    w = torch.randn(24, 100)  # 100 columns: the last group is padded
    q = Int4Weight.quantize(w, group_size)
    groups = -(-100 // group_size)
    assert q.qdata.shape == (24, groups * group_size // 2) and q.scales.shape == (24, groups)
    step = q.scales.float().repeat_interleave(group_size, dim=1)[:, :100]
    assert ((q.dequantize() - w).abs() <= 0.51 * step).all()
    rows = torch.tensor([[3, 0], [23, 3]])
    torch.testing.assert_close(q.rows(rows), q.dequantize()[rows], rtol=0, atol=0)


def dequantized_reference(model: GPT, mode: str) -> GPT:
    """A float model holding exactly the weights that quantizing `model` to `mode` keeps."""
    tensors = quantize_tensors(model.state_dict(), model.config, mode)
    reference = GPT(model.config).eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name in quantized_names(model.config):
            if mode == "int8":
                weight = Int8Weight(tensors[f"{name}.qdata"], tensors[f"{name}.scales"])
            else:
                k = reference.get_parameter(name).shape[1]
                weight = Int4Weight(
                    tensors[f"{name}.qdata"], tensors[f"{name}.scales"], tensors[f"{name}.zeros"], k
                )
            reference.get_parameter(name).copy_(weight.dequantize())
    return reference


@pytest.mark.parametrize("family", list(FAMILIES))
def test_native_int8_step_matches_the_dequantized_model(family: str, one_thread: None) -> None:
    model = make_model(family)
    quantized = quantize_model(model, "int8")
    reference = dequantized_reference(model, "int8")
    B, T = 3, model.config.block_size
    idx = torch.randint(0, model.config.vocab_size, (B, T))
    step = NativeDecodeStep(quantized)
    assert step.dtype == torch.bfloat16, "int8 weights decode over a bf16 KV cache"
    cache = KVCache(model.config, B, dtype=step.dtype)
    reference_cache = KVCache(model.config, B, dtype=step.dtype)
    live = torch.ones(B, dtype=torch.long)

    def reference_step(t: int) -> torch.Tensor:  # fp32 arithmetic, keys and values stored in bf16
        logits = reference(idx[:, t : t + 1], kv_cache=reference_cache).logits[:, -1]
        reference_cache.advance(1)
        return logits

    with torch.inference_mode():
        expected = torch.stack([reference_step(t) for t in range(T)], dim=1)
        got = torch.stack([step(idx[:, t : t + 1].contiguous(), cache, live) for t in range(T)], dim=1)
    spread = (expected.max() - expected.min()).item()
    # Within 1e-3 of the spread, not 1e-5: a key that differs in its last fp32 bits can round to
    # the next bf16 value (0.4% apart) in one cache and not in the other.
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-3 * spread)


def test_native_int8_generates_the_dequantized_model_tokens(one_thread: None) -> None:
    """Greedy tokens only: a sampled token can flip where a key rounds to the other bf16 neighbour in
    one cache (2 rows in 60 over 20 seeds); the native step samples as eager decoding does (test_native)."""
    model = make_model("llama")
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)  # peaked distributions: rounding differences cannot flip a choice
    quantized = quantize_model(model, "int8")
    reference = dequantized_reference(model, "int8")
    prompts = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10], [11]]
    params = SamplingParams(temperature=0.0, max_new_tokens=25)
    native = generate(quantized, prompts, params, backend="native")
    assert [g.tokens for g in native] == reference_tokens(reference, prompts, params)


def reference_tokens(reference: GPT, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
    """Eager decoding in fp32 over a bf16 KV cache, as the native int8 step keeps it."""
    requests = [Request(prompt, params, reference.config) for prompt in prompts]
    engine = Engine(reference, max_batch=len(prompts))
    room = min(reference.config.block_size, max(r.prompt_tokens + r.max_new_tokens for r in requests))
    engine.cache = KVCache(reference.config, len(prompts), room, dtype=torch.bfloat16)
    engine.submit(requests)
    for _ in engine.drain():
        pass
    return [r.tokens for r in requests]


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_eager_quantized_path_matches_the_dequantized_model(mode: str) -> None:
    """torch's packed kernels take bf16-rounded inputs: within 2% of the logit range, as bf16 is."""
    model = make_model("gpt2")
    quantized = quantize_model(model, mode)
    idx = torch.randint(0, model.config.vocab_size, (2, model.config.block_size))
    with torch.inference_mode():
        expected = dequantized_reference(model, mode)(idx).logits
        got = quantized(idx).logits
    spread = (expected.max() - expected.min()).item()
    torch.testing.assert_close(got, expected, rtol=0, atol=0.02 * spread)


def test_int4_is_refused_by_the_native_step() -> None:
    with pytest.raises(ValueError, match="fp32 or bf16"):
        NativeDecodeStep(quantize_model(make_model("gpt2"), "int4"))


def test_tied_embedding_is_stored_once() -> None:
    model = make_model("gpt2")  # tied
    quantized = quantize_model(model, "int8")
    assert quantized.wte.qweight is quantized.lm_head.qweight
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2)
    assert weight_bytes(quantized) < 0.3 * 4 * matrices + 4 * (model.num_params() - matrices) + 2048
