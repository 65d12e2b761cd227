"""No sampling parameter or logit can break a request or the engine (issue 16).

Property-based (hypothesis) over the whole space `SamplingParams` admits: every parameter
value and every logit (NaN, +-inf) gives a token id in the vocabulary, never one that is
impossible while a possible one exists; and in the engine, hostile rows decode in one batch
with well-behaved rows, which get exactly the tokens they get alone, while the engine keeps
serving. A scheduler that does die leaves its cause in `failure` (what /readyz reports).
The engine runs the eager step here (no C++ build); the sampling is the same for both steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microgpt.model import GPT
from microgpt.sampling import SamplingParams, choose_next, filter_logits, token_logprobs
from microgpt.serving import BatchEngine, EngineError

# The extremes first: hypothesis draws from these more often than a uniform float would.
TINY = [5e-324, 1e-320, 1e-300, 1e-45, 1e-8]
HUGE = [1e8, 1e38, 1e39, 1e300, 1.7e308]


def floats_between(low: float, high: float, *, exclude_low: bool = False, exclude_high: bool = False):  # noqa: ANN201
    edges = [x for x in [low, high, *TINY, *HUGE] if (low < x or (x == low and not exclude_low))]
    edges = [x for x in edges if x < high or (x == high and not exclude_high)]
    return st.sampled_from(edges) | st.floats(
        low, high, exclude_min=exclude_low, exclude_max=exclude_high, allow_nan=False, allow_infinity=False
    )


def sampling_params() -> st.SearchStrategy[SamplingParams]:
    """Any SamplingParams the model accepts (as the HTTP schemas admit a subset of it)."""
    return st.builds(
        SamplingParams,
        max_new_tokens=st.integers(1, 4),
        temperature=floats_between(0.0, 1.7e308),
        top_k=st.none() | st.integers(1, 64),
        top_p=floats_between(0.0, 1.0, exclude_low=True),
        min_p=floats_between(0.0, 1.0, exclude_high=True),
        repetition_penalty=floats_between(0.0, 1.7e308, exclude_low=True),
        frequency_penalty=floats_between(-2.0, 2.0),
        presence_penalty=floats_between(-2.0, 2.0),
        seed=st.none() | st.integers(-(2**70), 2**70),
    )


LOGIT = st.floats(width=32, allow_nan=True, allow_infinity=True) | st.sampled_from(
    [math.inf, -math.inf, math.nan, 0.0, 3.4e38, -3.4e38]
)


@st.composite
def logits_and_counts(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    vocab = draw(st.integers(1, 48))
    logits = torch.tensor(draw(st.lists(LOGIT, min_size=vocab, max_size=vocab)), dtype=torch.float32)
    counts = torch.tensor(
        draw(st.lists(st.integers(0, 5), min_size=vocab, max_size=vocab)), dtype=torch.float32
    )
    return logits, counts


@settings(max_examples=400, deadline=None)
@given(params=sampling_params(), data=logits_and_counts(), penalised=st.booleans())
def test_every_parameter_and_logit_gives_a_token_in_the_vocabulary(
    params: SamplingParams, data: tuple[torch.Tensor, torch.Tensor], penalised: bool
) -> None:
    logits, counts = data
    token = choose_next(logits, params, params.make_generator(), counts if penalised else None)
    assert 0 <= token < logits.shape[-1]
    possible = ~torch.isnan(logits) & (logits > float("-inf"))
    if possible.any() and not penalised:  # a penalty may make a token impossible; without, never
        assert possible[token], f"chose {token} (logit {logits[token]}) though others were possible"
        if torch.isposinf(logits).any():  # +inf tokens are the whole distribution's limit
            assert torch.isposinf(logits[token])


@settings(max_examples=200, deadline=None)
@given(params=sampling_params(), data=logits_and_counts())
def test_filters_always_keep_the_most_likely_token(
    params: SamplingParams, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    logits, _ = data
    # NaN counts as impossible; infinities stay (nan_to_num alone would make them finite).
    finite = logits.nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    if not (finite > float("-inf")).any():
        return
    kept = filter_logits(logits, params)
    assert not kept.isnan().any()
    assert kept.max() > float("-inf")
    assert finite[int(kept.argmax())] == finite.max()  # one of the most likely tokens (ties: any)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(top_p=1e-300),  # issue 16: float32 rounded it to 0, every token was dropped
        SamplingParams(top_p=5e-324),
        SamplingParams(temperature=5e-324),
        SamplingParams(temperature=1e-300, top_p=1e-300, min_p=0.999999),
        SamplingParams(temperature=1e-300, repetition_penalty=1e300),  # float32: 0 * inf = NaN
        SamplingParams(temperature=1e-300, repetition_penalty=5e-324),  # float32: 0 / 0 = NaN
    ],
)
def test_extreme_parameters_tend_to_greedy_on_ordinary_logits(params: SamplingParams) -> None:
    logits = torch.tensor([0.0, 2.0, -1.0, 1.5, 0.0])
    counts = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])  # the zero logit at 0 was seen
    assert choose_next(logits, params, params.make_generator(), counts) == 1


def test_logprobs_of_infinite_logits_are_not_nan() -> None:
    logprob, top = token_logprobs(torch.tensor([float("inf"), 1.0, float("nan")]), 0, 2)
    assert logprob == 0.0 and not any(math.isnan(v) for _, v in top)


def test_infinite_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=math.inf)
    with pytest.raises(ValueError, match="repetition_penalty"):
        SamplingParams(repetition_penalty=math.inf)


PROMPT = [1, 2, 3]
WELL_BEHAVED = [
    SamplingParams(temperature=0.0, max_new_tokens=6),
    SamplingParams(temperature=0.8, top_k=10, top_p=0.9, max_new_tokens=6, seed=5),
]


@pytest.fixture(scope="module")
def engine(peaked_model: GPT) -> Iterator[BatchEngine]:
    engine = BatchEngine(peaked_model, max_batch=8, backend="eager", name="safety")
    engine.start()
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def alone(engine: BatchEngine) -> list[list[int]]:
    """The well-behaved rows' tokens, each decoded alone."""
    return [[e.token_id for e in engine.submit(PROMPT, p) if e.token_id is not None] for p in WELL_BEHAVED]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hostile=sampling_params())
def test_hostile_rows_neither_fail_nor_disturb_a_batch(
    engine: BatchEngine, alone: list[list[int]], hostile: SamplingParams
) -> None:
    handles = [engine.submit(PROMPT, hostile), *(engine.submit(PROMPT, p) for p in WELL_BEHAVED)]
    results = [list(handle) for handle in handles]  # an EngineError here fails the test
    vocab = engine.config.vocab_size
    assert all(0 <= e.token_id < vocab for e in results[0] if e.token_id is not None)
    assert results[0][-1].finish_reason == "length"
    assert [[e.token_id for e in r if e.token_id is not None] for r in results[1:]] == alone
    assert engine.failure is None


def test_a_dead_scheduler_reports_why_and_refuses_new_requests(peaked_model: GPT) -> None:
    engine = BatchEngine(peaked_model, max_batch=2, backend="eager", name="doomed")
    engine.start()
    engine.core.cache.k.clear()  # a fault inside the decode step itself (no layer caches left)
    with pytest.raises(EngineError):
        list(engine.submit(PROMPT, WELL_BEHAVED[0]))
    assert isinstance(engine.failure, IndexError)
    with pytest.raises(EngineError, match="stopped"):
        engine.submit(PROMPT, WELL_BEHAVED[0])
    engine.stop()
