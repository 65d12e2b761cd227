"""The continuous-batching engine: batched equals single, seeds are per request, and every limit
(cancel, full queue, context) behaves as documented.

Greedy equality is exact (token for token) on a peaked fp32 model on one thread, for the native
step (which computes each row alone) and for eager decoding (where the peaked distributions keep
last-bit rounding differences from flipping a choice).
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from microgpt.config import GPTConfig
from microgpt.generate import generate
from microgpt.model import GPT
from microgpt.sampling import SamplingParams
from microgpt.serving import BatchEngine, QueueFullError, TokenEvent

PROMPTS = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [10, 11], [12], [13, 14, 15], [16, 17]]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=30)
SEEDED = SamplingParams(temperature=1.0, top_k=20, top_p=0.9, max_new_tokens=30, seed=11)


def tokens(events: list[TokenEvent]) -> list[int]:
    return [e.token_id for e in events if e.token_id is not None]


def run_staggered(
    engine: BatchEngine, prompts: list[list[int]], params: list[SamplingParams]
) -> list[list[int]]:
    """Submit requests one after another, each once the previous one has produced 3 tokens,
    so they join a batch that is already decoding, and read each from its own thread."""
    results: list[list[int]] = [[] for _ in prompts]
    readers = []
    for i, (prompt, sp) in enumerate(zip(prompts, params)):
        handle = engine.submit(prompt, sp)
        started = threading.Event()

        def read(i: int = i, handle=handle, started: threading.Event = started) -> None:
            for n, event in enumerate(handle):
                if n == 2:
                    started.set()
                if event.token_id is not None:
                    results[i].append(event.token_id)
            started.set()

        reader = threading.Thread(target=read)
        reader.start()
        readers.append(reader)
        started.wait(timeout=30)
    for reader in readers:
        reader.join(timeout=60)
    return results


@pytest.fixture(params=["native", "native-2", "eager"])
def engine(request: pytest.FixtureRequest, peaked_model: GPT):
    """native: every prompt here is fed through the decode steps; native-2: prompts of up to two
    tokens are, longer ones prefilled, in the same batch; eager: all prefilled."""
    backend, _, feed = request.param.partition("-")
    engine = BatchEngine(peaked_model, max_batch=4, backend=backend, feed_tokens=int(feed or 8))
    engine.start()
    yield engine
    engine.stop()


def test_batched_equals_single_under_greedy(engine: BatchEngine, peaked_model: GPT) -> None:
    got = run_staggered(engine, PROMPTS, [GREEDY] * len(PROMPTS))  # 7 requests through 4 rows
    expected = [g.tokens for g in generate(peaked_model, PROMPTS, GREEDY)]
    assert got == expected
    assert all(len(t) == 30 for t in got)
    assert engine.stats.steps > 0 and engine.stats.running == 0


def test_seeded_sampling_ignores_batch_company(engine: BatchEngine) -> None:
    alone = tokens(list(engine.submit([3, 1, 4], SEEDED)))
    company = [SEEDED.model_copy(update={"seed": s}) for s in range(5)]
    together = run_staggered(
        engine, [[2, 7], [3, 1, 4], [9], [8, 8], [1]], [company[0], SEEDED, *company[2:]]
    )
    assert together[1] == alone
    assert len({tuple(t) for t in together}) > 1  # different seeds, different samples


def test_asyncio_iteration_matches_threads(engine: BatchEngine) -> None:
    expected = [tokens(list(engine.submit(p, GREEDY))) for p in PROMPTS[:3]]

    async def read_all() -> list[list[int]]:
        async def one(prompt: list[int]) -> list[int]:
            return tokens([e async for e in engine.submit(prompt, GREEDY)])

        return await asyncio.gather(*(one(p) for p in PROMPTS[:3]))

    assert asyncio.run(read_all()) == expected


def test_batches_hold_the_same_events_and_end_with_the_finish(engine: BatchEngine) -> None:
    expected = list(engine.submit(PROMPTS[0], GREEDY))

    async def read(interval: float) -> list[list[TokenEvent]]:
        handle = engine.submit(PROMPTS[0], GREEDY)
        await asyncio.sleep(0.05)  # let events queue up: the first list takes all of them
        return [batch async for batch in handle.batches(interval)]

    for interval in (0.0, 0.01):
        batches = asyncio.run(read(interval))
        assert [e for batch in batches for e in batch] == expected
        assert batches[-1][-1].finish_reason is not None and all(batches)


def test_stop_token_ends_a_request_unemitted(engine: BatchEngine) -> None:
    full = tokens(list(engine.submit([1, 2, 3], GREEDY)))
    stop_id = full[5]
    events = list(engine.submit([1, 2, 3], GREEDY.model_copy(update={"stop_token_ids": [stop_id]})))
    assert tokens(events) == full[: full.index(stop_id)]
    assert events[-1] == TokenEvent(None, finish_reason="stop")


def test_logprobs_describe_the_choice(engine: BatchEngine) -> None:
    events = list(engine.submit([1, 2], GREEDY.model_copy(update={"max_new_tokens": 5}), logprobs=3))
    assert [e.finish_reason for e in events] == [None] * 4 + ["length"]
    for e in events:
        assert len(e.top_logprobs) == 3
        assert e.top_logprobs[0] == (e.token_id, pytest.approx(e.logprob))  # greedy picks the top one
        assert e.logprob <= 0


def test_cancel_frees_the_row_for_a_waiting_request(one_thread: None) -> None:
    # A long context, so that the long request is still decoding when the cancel lands.
    model = GPT(GPTConfig(vocab_size=50, block_size=4096, n_layer=1, n_head=2, n_embd=32)).eval()
    engine = BatchEngine(model, max_batch=1)
    engine.start()
    try:
        long = engine.submit([1], SamplingParams(temperature=0.0, max_new_tokens=4096))
        waiting = engine.submit([2], SamplingParams(temperature=0.0, max_new_tokens=3))
        reader = iter(long)  # kept: a reader that is dropped cancels its request
        assert next(reader).token_id is not None  # the long request holds the only row now
        assert engine.stats.queued == 1
        long.cancel()
        events = list(waiting)
        assert len(tokens(events)) == 3 and events[-1].finish_reason == "length"
        assert list(reader)[-1] == TokenEvent(None, finish_reason="cancelled")
        assert long.finish_reason == "cancelled" and long.completion_tokens < 4096
        deadline = time.monotonic() + 5  # the row is freed just after its last event is sent
        while engine.stats.running and time.monotonic() < deadline:
            time.sleep(0.001)
        assert engine.stats.running == 0
    finally:
        engine.stop()


def test_leaving_the_loop_cancels(peaked_model: GPT) -> None:
    engine = BatchEngine(peaked_model, max_batch=1)
    engine.start()
    try:
        handle = engine.submit([1], SamplingParams(temperature=0.0, max_new_tokens=40))
        for _ in handle:
            break
        assert handle.cancelled
        assert len(tokens(list(engine.submit([2], GREEDY)))) == 30  # the row came back
    finally:
        engine.stop()


def test_full_queue_raises_with_retry_after(peaked_model: GPT) -> None:
    engine = BatchEngine(peaked_model, max_batch=1, max_queue=2)  # not started: nothing leaves the queue
    waiting = [engine.submit([1], GREEDY) for _ in range(2)]
    with pytest.raises(QueueFullError) as raised:
        engine.submit([1], GREEDY)
    assert raised.value.retry_after >= 1
    engine.stop()
    assert all(h.finish_reason == "cancelled" for h in waiting)


def test_context_limits(engine: BatchEngine) -> None:
    block = engine.config.block_size
    with pytest.raises(
        ValueError, match=f"maximum context length is {block} tokens; your prompt has 49 tokens"
    ):
        engine.submit([1] * (block + 1), GREEDY)
    with pytest.raises(ValueError, match="empty"):
        engine.submit([], GREEDY)
    with pytest.raises(ValueError, match="vocabulary"):
        engine.submit([50], GREEDY)
    full = engine.submit([1] * block, GREEDY)  # room for exactly one token
    assert len(tokens(list(full))) == 1 and full.finish_reason == "length"
    capped = engine.submit([1] * (block - 5), SamplingParams(temperature=0.0, max_new_tokens=100))
    assert capped.max_new_tokens == 6 and len(tokens(list(capped))) == 6
    nothing = engine.submit([1], SamplingParams(max_new_tokens=0))
    assert list(nothing) == [TokenEvent(None, finish_reason="length")]
