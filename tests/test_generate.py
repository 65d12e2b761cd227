"""Generation: the KV cache gives exactly the tokens of full recompute, batched equals single,
sampling is seeded, and invalid parameters are refused.

Models run in float64 so that "exactly the same tokens" is a property of the code, not luck:
the cache and recompute paths differ only in summation order (~1e-16).
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import LLAMA, MICROGPT

from microgpt.generate import generate, stream
from microgpt.model import GPT
from microgpt.sampling import SamplingParams, filter_logits
from microgpt.zoo import get_preset

FAMILIES = {
    "microgpt": MICROGPT,
    "nanogpt": get_preset("shakespeare-cpu").model.updated(n_layer=2, n_embd=64, block_size=48),
    "llama": LLAMA.updated(vocab_size=40, block_size=48, qk_norm=False),  # 40 new tokens fit the context
}
SAMPLING = {
    "greedy": SamplingParams(temperature=0.0, max_new_tokens=40),
    "seeded": SamplingParams(temperature=1.0, top_k=20, top_p=0.9, min_p=0.02, max_new_tokens=40, seed=7),
    "penalised": SamplingParams(
        temperature=0.8,
        repetition_penalty=1.3,
        presence_penalty=0.5,
        frequency_penalty=0.2,
        max_new_tokens=40,
        seed=3,
    ),
}


def make_model(family: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(FAMILIES[family]).double().eval()
    with torch.no_grad():  # larger weights give peaked, non-uniform distributions
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    return model


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("mode", list(SAMPLING))
def test_kv_cache_yields_the_tokens_of_full_recompute(family: str, mode: str) -> None:
    model = make_model(family)
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10]]
    params = SAMPLING[mode]
    cached = generate(model, prompts, params)
    recomputed = generate(model, prompts, params, use_cache=False)
    assert [g.tokens for g in cached] == [g.tokens for g in recomputed]
    assert all(len(g.tokens) > 5 for g in cached)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_batched_equals_one_at_a_time(family: str) -> None:
    model = make_model(family)
    prompts = [[1, 2], [3, 4, 5, 6, 7], [8]]
    params = SAMPLING["seeded"]
    batched = generate(model, prompts, params)
    for prompt, together in zip(prompts, batched):
        (alone,) = generate(model, [prompt], params)
        assert alone.tokens == together.tokens


def test_same_seed_same_output_other_seed_other_output() -> None:
    model = make_model("llama")
    params = SamplingParams(temperature=1.0, max_new_tokens=30, seed=11)
    first = generate(model, [[1]], params)[0].tokens
    assert generate(model, [[1]], params)[0].tokens == first
    assert generate(model, [[1]], params.model_copy(update={"seed": 12}))[0].tokens != first


def test_stream_yields_the_generated_tokens() -> None:
    model = make_model("nanogpt")
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    assert list(stream(model, [1, 2], params)) == generate(model, [[1, 2]], params)[0].tokens


def test_stop_token_ends_the_row_and_is_not_emitted() -> None:
    model = make_model("llama")
    free = generate(model, [[1]], SamplingParams(temperature=0.0, max_new_tokens=20))[0]
    stop_at = free.tokens[5]
    first = free.tokens.index(stop_at)
    stopped = generate(
        model, [[1]], SamplingParams(temperature=0.0, max_new_tokens=20, stop_token_ids=[stop_at])
    )
    assert stopped[0].tokens == free.tokens[:first]
    assert stopped[0].finish_reason == "stop"


def test_generation_is_capped_at_the_context() -> None:
    model = make_model("microgpt")  # block_size 16
    out = generate(model, [[0, 1, 2, 3]], SamplingParams(temperature=0.0, max_new_tokens=100))[0]
    assert len(out.tokens) == 16 - 4 + 1
    assert out.finish_reason == "length"
    recomputed = generate(
        model, [[0, 1, 2, 3]], SamplingParams(temperature=0.0, max_new_tokens=100), use_cache=False
    )
    assert recomputed[0].tokens == out.tokens


def test_repetition_penalty_reduces_repeats() -> None:
    model = make_model("nanogpt")
    plain = generate(model, [[1]], SamplingParams(temperature=0.0, max_new_tokens=40))[0].tokens
    penalised = generate(
        model, [[1]], SamplingParams(temperature=0.0, max_new_tokens=40, repetition_penalty=5.0)
    )
    assert len(set(penalised[0].tokens)) > len(set(plain))


def test_filters_keep_what_they_promise() -> None:
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.06, 0.04]))

    def kept(**kw: float) -> list[int]:
        return torch.isfinite(filter_logits(logits, SamplingParams(**kw))).nonzero().flatten().tolist()

    assert kept(top_k=2) == [0, 1]
    assert kept(top_p=0.7) == [0, 1]  # 0.5 < 0.7, 0.75 >= 0.7: the nucleus is the first two
    assert kept(top_p=0.5) == [0]
    assert kept(min_p=0.25) == [0, 1, 2]  # p >= 0.25 * 0.5
    assert kept(top_p=1.0) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"min_p": 1.0}, "min_p"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"temprature": 1.0}, "temprature"),
    ],
)
def test_invalid_sampling_parameters_raise_value_error(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_invalid_prompts_raise_value_error() -> None:
    model = make_model("microgpt")
    params = SamplingParams(max_new_tokens=3)
    with pytest.raises(ValueError, match="maximum context length is 16 tokens; your prompt has 17"):
        generate(model, [list(range(17))], params)
    with pytest.raises(ValueError, match="empty"):
        generate(model, [[]], params)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(model, [[27]], params)
    with pytest.raises(ValueError, match="2 prompts but 1"):
        generate(model, [[1], [2]], [params])


def test_attention_window_grows_without_changing_tokens() -> None:
    """Past 64 and 128 positions the cache widens its attention window; tokens must not notice."""
    torch.manual_seed(0)
    model = GPT(FAMILIES["llama"].updated(block_size=160)).double().eval()
    params = SamplingParams(temperature=1.0, max_new_tokens=150, seed=1)
    cached = generate(model, [[1, 2, 3]], params)[0].tokens
    assert len(cached) == 150
    assert cached == generate(model, [[1, 2, 3]], params, use_cache=False)[0].tokens


def test_compiled_decode_step_yields_the_eager_tokens() -> None:
    """The Inductor-compiled step (frozen weights, autotuned GEMMs, growing windows) changes speed only."""
    torch.manual_seed(0)
    model = GPT(FAMILIES["nanogpt"].updated(block_size=100)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)  # peaked distributions: float32 rounding cannot flip the argmax
    prompts = [[1, 2, 3], [4]]
    params = SamplingParams(temperature=0.0, max_new_tokens=90)
    eager = generate(model, prompts, params)
    compiled = generate(model, prompts, params, backend="compiled")
    assert [g.tokens for g in compiled] == [g.tokens for g in eager]
    assert all(len(g.tokens) == 90 for g in compiled)


def test_zero_new_tokens_finishes_at_once() -> None:
    model = make_model("llama")
    out = generate(model, [[1, 2], [3]], [SamplingParams(max_new_tokens=0), SamplingParams(max_new_tokens=2)])
    assert out[0].tokens == [] and out[0].finish_reason == "length"
    assert len(out[1].tokens) == 2
