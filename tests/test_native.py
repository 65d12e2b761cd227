"""The native C++ decode step agrees with the PyTorch model, for every architecture family.

Tolerances: fp32 logits within 1e-4 absolute of the eager model (the C++ step uses a
polynomial exp/erf with ~2e-7 relative error and another summation order); bf16 weights
are compared with the same bf16 weights run in fp32 by PyTorch, within 2% of the logit
range, since the native step keeps its KV cache in bf16 and rounds the inputs of
bf16 products to bf16.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import GPT2, LLAMA, MICROGPT, ODD_SIZES, WIDE_MLP

from microgpt.generate import generate
from microgpt.kv_cache import KVCache
from microgpt.model import GPT
from microgpt.native import NativeDecodeStep
from microgpt.quantize import FLOAT_DTYPES, quantize_model
from microgpt.sampling import SamplingParams
from microgpt.zoo import get_preset

FAMILIES = {
    "microgpt": MICROGPT,
    "nanogpt": get_preset("shakespeare-cpu").model.updated(n_layer=2),
    "gpt2": GPT2,
    "llama": LLAMA.updated(bias=True),  # the kernels' bias paths too
    "odd-sizes": ODD_SIZES,
    "wide-mlp": WIDE_MLP,
}


def make_model(family: str) -> GPT:
    torch.manual_seed(0)
    model = GPT(FAMILIES[family]).eval()
    with torch.no_grad():  # non-trivial gains and biases, so that every parameter matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def native_logits(model: GPT, idx: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits at every position: PyTorch prefills `prefill` tokens, the native step does the rest."""
    B, T = idx.shape
    cache = KVCache(model.config, B, dtype=model.wte.weight.dtype)
    step = NativeDecodeStep(model)
    with torch.inference_mode():
        logits = [model(idx[:, :prefill], kv_cache=cache).logits.float()]
        cache.advance(prefill)
        live = torch.ones(B, dtype=torch.long)
        for t in range(prefill, T):
            logits.append(step(idx[:, t : t + 1].contiguous(), cache, live)[:, None])
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fp32_native_step_matches_the_model(family: str) -> None:
    model = make_model(family)
    idx = torch.randint(0, model.config.vocab_size, (3, model.config.block_size))
    with torch.inference_mode():
        expected = model(idx).logits
    torch.testing.assert_close(native_logits(model, idx, prefill=4), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", ["nanogpt", "llama"])
def test_bf16_native_step_matches_bf16_weights_in_fp32(family: str) -> None:
    model = make_model(family)
    bf16 = GPT(model.config).eval()
    bf16.load_state_dict(model.state_dict())
    bf16.to(torch.bfloat16)
    reference = GPT(model.config).eval()
    reference.load_state_dict(bf16.state_dict())  # the bf16-rounded weights, in fp32
    idx = torch.randint(0, model.config.vocab_size, (2, model.config.block_size))
    with torch.inference_mode():
        expected = reference(idx).logits
    got = native_logits(bf16, idx, prefill=1)
    spread = (expected.max() - expected.min()).item()
    torch.testing.assert_close(got, expected, rtol=0, atol=0.02 * spread)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("family", ["nanogpt", "odd-sizes"])
def test_a_batch_row_gets_the_logits_it_gets_alone(family: str, precision: str) -> None:
    """Tiles of several rows (and their remainders: 19 rows, odd widths; int8 on AMX takes 16 rows
    at a time where the CPU has it) change nothing, bit for bit."""
    model = make_model(family)
    model = quantize_model(model, "int8") if precision == "int8" else model.to(FLOAT_DTYPES[precision])
    step = NativeDecodeStep(model)
    rows, prefix = 19, 5
    idx = torch.randint(0, model.config.vocab_size, (rows, prefix + 1))

    def last_logits(batch: torch.Tensor) -> torch.Tensor:
        cache = KVCache(model.config, len(batch), dtype=step.dtype)
        live = torch.ones(len(batch), dtype=torch.long)
        with torch.inference_mode():
            for t in range(prefix + 1):
                logits = step(batch[:, t : t + 1].contiguous(), cache, live)
        return logits

    batched = last_logits(idx)
    for row in range(rows):
        assert torch.equal(batched[row], last_logits(idx[row : row + 1])[0])


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_the_logits_do_not_depend_on_the_team_size(precision: str) -> None:
    """Any thread may take any item of a step's phases (csrc/team.h), and a team larger than the
    machine's cores (threads the OS puts aside, workers that join a step late) still finishes
    every step: 2, 3 and 5 threads give one thread's bits."""
    model = make_model("nanogpt")
    model = quantize_model(model, "int8") if precision == "int8" else model.to(FLOAT_DTYPES[precision])
    step = NativeDecodeStep(model)
    idx = torch.randint(0, model.config.vocab_size, (7, 6))

    def logits(threads: int) -> torch.Tensor:
        cache = KVCache(model.config, len(idx), dtype=step.dtype)
        live = torch.ones(len(idx), dtype=torch.long)
        with torch.inference_mode():
            return torch.stack([step(idx[:, t : t + 1].contiguous(), cache, live, threads) for t in range(6)])

    alone = logits(1)
    for threads in (2, 3, 5):
        assert torch.equal(logits(threads), alone)


def test_native_backend_generates_the_eager_tokens() -> None:
    model = make_model("llama")
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)  # peaked distributions: rounding differences cannot flip a choice
    prompts = [[1, 2, 3], [4], [5, 6]]
    for params in (
        SamplingParams(temperature=0.0, max_new_tokens=25),
        SamplingParams(temperature=0.8, top_k=10, max_new_tokens=25, seed=4),
    ):
        eager = generate(model, prompts, params)
        native = generate(model, prompts, params, backend="native")
        assert [g.tokens for g in native] == [g.tokens for g in eager]


def test_unsupported_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="fp32 or bf16"):
        NativeDecodeStep(make_model("gpt2").double())
