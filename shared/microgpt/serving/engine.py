"""Continuous batching: concurrent requests share one model, one decode step at a time.

    engine = BatchEngine(model, max_batch=32)
    engine.start()
    handle = engine.submit(prompt_ids, SamplingParams(max_new_tokens=64, seed=1))
    for event in handle:            # or `async for event in handle` inside an event loop
        ...                         # TokenEvent(token_id, logprob, top_logprobs, finish_reason)
    engine.stop()

Design (vLLM's continuous batching at nanochat's scale; the engine speaks token ids):
- One KV cache, preallocated for `max_batch` rows at the full context. Active requests
  hold rows 0..n-1; when one retires, the last active row moves into its place (its cache
  prefix copied), so a decode step always runs on the first n rows: one stream pays for
  one row, not for `max_batch`.
- A scheduler thread loops: retire finished and cancelled rows, admit waiting requests
  into the free rows, then run ONE decode step for all active rows (the native C++ step
  on CPU when the model allows, else eager) and choose each row's token with its own
  `SamplingParams` and seeded generator. Requests join between steps; nobody waits for a
  batch to drain.
- Admission: under the native step a short prompt (up to `feed_tokens`) rides along in
  the decode steps, one token a step, so admitting it costs the running streams nothing
  (a one-token prompt gets its first token from the very next step). Longer prompts are
  prefilled together by the eager model, right-padded, up to `prefill_tokens` padded
  tokens a step, which is cheaper than feeding them token by token.
- Stop strings are the caller's (it decodes text, then cancels); `stop_token_ids` (EOS)
  end a request here with finish_reason "stop" and are never emitted.
- Backpressure: at most `max_queue` requests wait, then `submit` raises `QueueFullError`
  with a retry-after estimate. A prompt longer than the context is a `ValueError` worded
  like OpenAI's; `max_new_tokens` is capped to the context left.
- Failures: an error while choosing one row's token fails that request alone (its reader
  gets an `EngineError`); the other rows decode on. An error in the step itself stops the
  engine, fails every request, and leaves the cause in `failure`, so its owner can report
  it (`/readyz`) and start a new engine.
- Threads: the native step runs on 1 or `threads` threads, whichever its recent steps
  say is faster (`microgpt.serving.threads`): a second thread halves a step on an idle
  machine and stalls it at every barrier on a busy one.
- A row's tokens do not depend on the rest of the batch under the native step (it
  computes every row alone); under eager decoding a batch's matmuls may round
  differently from a single row's, in the last bits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from microgpt.generate import Backend, activation_device_and_dtype, cache_dtype, make_decode_step
from microgpt.kv_cache import KVCache
from microgpt.model import GPT
from microgpt.native import NativeDecodeStep
from microgpt.sampling import SamplingParams, SequenceSampler, token_logprobs
from microgpt.serving.threads import TeamSizer

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "cancelled"]
MAX_LOGPROBS = 20  # OpenAI's limit on alternatives per token


@dataclass(frozen=True)
class TokenEvent:
    """One step of one request. `token_id` is None only on an event that just ends the
    stream: a stop token (never emitted), a cancellation, or `max_new_tokens=0`."""

    token_id: int | None
    logprob: float | None = None  # of token_id under the model's raw distribution, if asked
    top_logprobs: list[tuple[int, float]] | None = None  # the most likely tokens, if asked
    finish_reason: FinishReason | None = None  # set on the last event of a request


class QueueFullError(Exception):
    """Too many requests are waiting; try again after `retry_after` seconds."""

    def __init__(self, queued: int, retry_after: float) -> None:
        super().__init__(f"{queued} requests are already waiting; retry after {retry_after:.0f} s")
        self.queued, self.retry_after = queued, retry_after


class EngineError(RuntimeError):
    """The engine stopped serving a request (it failed, or was stopped before the request ran)."""


@dataclass(frozen=True)
class EngineStats:
    running: int  # requests decoding now
    queued: int  # requests waiting for a row
    last_batch_size: int  # rows in the latest decode step
    max_batch: int
    steps: int  # decode steps so far
    prompt_tokens: int  # prefilled so far
    generated_tokens: int  # emitted so far
    backend: str


class RequestHandle:
    """One request's token events, readable from a thread (`for`) or a coroutine (`async for`).

    Leaving the loop early (break, an exception, a disconnected client's cancelled task)
    cancels the request, so its row is freed at the next step.
    """

    def __init__(self, prompt: list[int], params: SamplingParams, logprobs: int | None, limit: int) -> None:
        self.prompt, self.params, self.logprobs = prompt, params, logprobs
        self.max_new_tokens = limit  # after capping to the context
        self.prompt_tokens = len(prompt)
        self.completion_tokens = 0
        self.submitted_at = time.perf_counter()
        self.time_to_first_token: float | None = None  # seconds from submit to the first event
        self.finish_reason: FinishReason | None = None
        self._cancelled = False
        self._events: deque[TokenEvent] = deque()
        self._cond = threading.Condition()
        self._wakers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._woken = False  # a wake-up is on its way to the async readers: no need for another
        self._error: BaseException | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self._error is not None

    def cancel(self) -> None:
        """Ask the engine to end this request; it frees the row at its next step."""
        self._cancelled = True

    def __iter__(self) -> Iterator[TokenEvent]:
        finished = False
        try:
            while True:
                with self._cond:
                    while not self._events and self._error is None:
                        self._cond.wait()
                    if not self._events:
                        raise EngineError(str(self._error)) from self._error
                    event = self._events.popleft()
                yield event
                if event.finish_reason is not None:
                    finished = True
                    return
        finally:
            if not finished:
                self.cancel()

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self._events_async()

    async def _events_async(self) -> AsyncIterator[TokenEvent]:
        async with contextlib.aclosing(self.batches()) as batches:  # closing it cancels the request
            async for batch in batches:
                for event in batch:
                    yield event

    async def batches(
        self, interval: float | Callable[[], float] = 0.0
    ) -> AsyncGenerator[list[TokenEvent], None]:
        """The events in lists of all that were waiting when the reader came back for more.

        A reader that falls behind the engine catches up in one turn (one text delta, one
        network write) instead of paying its per-event costs once per token. With `interval`
        (seconds, or a function asked after each list) the reader comes back at most that
        often (the first list is never held back): on a busy CPU, every wake-up of the
        reader's event loop takes a core from the decode step, so a stream of a few hundred
        small writes a second is cheaper than one per token.
        The last list ends with the event that has a finish reason.
        """
        pace = interval if callable(interval) else lambda: interval
        loop, wake = asyncio.get_running_loop(), asyncio.Event()
        waker = (loop, wake)
        with self._cond:
            self._wakers.append(waker)
        finished = False
        try:
            while True:
                with self._cond:
                    batch, error = list(self._events), self._error
                    self._events.clear()
                    if not batch:
                        wake.clear()  # under the lock: a later event sets it again
                        self._woken = False
                if batch:
                    end = next((i for i, e in enumerate(batch) if e.finish_reason is not None), None)
                    if end is not None:
                        finished = True
                        batch = batch[: end + 1]
                    taken = time.perf_counter()
                    yield batch
                    if finished:
                        return
                    # While the reader sleeps, the engine does not wake it: `_woken` stays set until
                    # the reader finds no events waiting.
                    pause = pace() - (time.perf_counter() - taken)
                    if pause > 0:
                        await asyncio.sleep(pause)
                    continue
                if error is not None:
                    raise EngineError(str(error)) from error
                await wake.wait()
        finally:
            with self._cond:
                self._wakers.remove(waker)
            if not finished:
                self.cancel()

    # --- called by the engine's thread ---

    def _emit(self, event: TokenEvent) -> None:
        if self.time_to_first_token is None:
            self.time_to_first_token = time.perf_counter() - self.submitted_at
        if event.token_id is not None:
            self.completion_tokens += 1
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()
            self._wake()

    def _fail(self, error: BaseException) -> None:
        with self._cond:
            self._error = error
            self._cond.notify_all()
            self._wake()

    def _wake(self) -> None:
        # One wake-up per time the reader drains the events, not one per token: each costs the
        # event loop a self-pipe write and a turn.
        if self._woken:
            return
        self._woken = bool(self._wakers)
        for loop, wake in self._wakers:
            with contextlib.suppress(RuntimeError):  # that event loop is closed; its reader is gone
                loop.call_soon_threadsafe(wake.set)


@dataclass
class _Row:
    """An admitted request: the cache row it holds is its index in `BatchEngine._rows`."""

    handle: RequestHandle
    sampler: SequenceSampler
    length: int  # tokens in the cache
    next_token: int  # the token to feed at the next decode step
    prompt_left: deque[int] = field(default_factory=deque)  # prompt tokens still to feed after it


def resolve_backend(model: GPT, backend: Backend | Literal["auto"]) -> Backend:
    """`auto`: the native step on CPU when it can run this model (and build), else eager."""
    if backend != "auto":
        return backend
    device, _ = activation_device_and_dtype(model)
    if device.type != "cpu":
        return "eager"
    try:
        from microgpt.native import native_decode_step

        native_decode_step(model)
    except Exception as e:  # an unsupported model, or no compiler to build the extension
        log.warning("native decode step unavailable (%s); decoding with eager PyTorch", e)
        return "eager"
    return "native"


class BatchEngine:
    """Serves token-id requests for one model with continuous batching (see the module docstring)."""

    def __init__(
        self,
        model: GPT,
        *,
        max_batch: int = 32,
        max_queue: int = 256,
        backend: Backend | Literal["auto"] = "auto",
        name: str = "",
        prefill_tokens: int = 2048,
        feed_tokens: int = 8,
        threads: int | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 0 or prefill_tokens < 1 or feed_tokens < 0:
            raise ValueError("max_batch and prefill_tokens must be >= 1, max_queue and feed_tokens >= 0")
        self.model = model.eval()
        self.config = model.config
        self.name = name
        self.max_batch, self.max_queue, self.prefill_tokens = max_batch, max_queue, prefill_tokens
        self.device, _ = activation_device_and_dtype(model)
        self.backend = resolve_backend(model, backend)
        self.feed_tokens = feed_tokens if self.backend == "native" else 0
        # The native step's team: 1 or `threads` (default torch's count), whichever is faster now.
        self._team = TeamSizer(threads or torch.get_num_threads()) if self.backend == "native" else None
        self._decode_step = make_decode_step(model, self.backend)
        dtype = cache_dtype(model, self.backend)
        self.cache = KVCache(self.config, max_batch, device=self.device, dtype=dtype)
        self._rows: list[_Row] = []
        self._view: KVCache | None = None  # `cache.rows` of the active rows, kept while their count holds
        self._live = torch.ones(0, dtype=torch.long)
        self._queue: deque[RequestHandle] = deque()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._running = self._stopped = False
        self.failure: BaseException | None = None  # why the scheduler died, if it did
        self._steps = self._prompt_tokens = self._generated = self._last_batch = 0
        self._mean_request_s = 1.0  # moving average, for Retry-After

    # --- public API ---

    def start(self) -> None:
        """Start the scheduler thread (idempotent)."""
        with self._lock:
            if self._stopped:
                raise EngineError("the engine was stopped; create a new one")
            if self._thread is not None:
                return
            self._running = True
            self._thread = threading.Thread(
                target=self._loop, name=f"engine-{self.name or id(self)}", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the scheduler; requests still waiting or running end with "cancelled"."""
        with self._lock:
            self._running, self._stopped = False, True
            self._lock.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._lock:
            leftover = [r.handle for r in self._rows] + list(self._queue)
            self._rows.clear()
            self._queue.clear()
        for handle in leftover:
            handle._emit(TokenEvent(None, finish_reason="cancelled"))

    def submit(
        self, prompt_ids: Sequence[int], params: SamplingParams, *, logprobs: int | None = None
    ) -> RequestHandle:
        """Queue a request; its events arrive on the returned handle."""
        prompt = [int(t) for t in prompt_ids]
        block, vocab = self.config.block_size, self.config.vocab_size
        if not prompt:
            raise ValueError("the prompt is empty: give at least one token")
        if len(prompt) > block:
            raise ValueError(
                f"This model's maximum context length is {block} tokens; your prompt has {len(prompt)} tokens"
            )
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise ValueError(f"the prompt has token ids outside the vocabulary [0, {vocab})")
        if logprobs is not None and not 0 <= logprobs <= MAX_LOGPROBS:
            raise ValueError(f"logprobs must be between 0 and {MAX_LOGPROBS}, got {logprobs}")
        # The last token chosen is never fed back, so a row holds prompt + new - 1 tokens.
        handle = RequestHandle(prompt, params, logprobs, min(params.max_new_tokens, block - len(prompt) + 1))
        if handle.max_new_tokens == 0:
            handle._emit(TokenEvent(None, finish_reason="length"))
            return handle
        with self._lock:
            if self._stopped:
                raise EngineError("the engine was stopped")
            if len(self._queue) >= self.max_queue:
                retry = self._mean_request_s * (len(self._queue) / self.max_batch + 1)
                raise QueueFullError(len(self._queue), max(1.0, math.ceil(retry)))
            self._queue.append(handle)
            self._lock.notify_all()
        return handle

    @property
    def running(self) -> int:
        """Requests decoding now (read without the lock: a hint, not a snapshot)."""
        return len(self._rows)

    @property
    def stats(self) -> EngineStats:
        with self._lock:
            return EngineStats(
                running=len(self._rows),
                queued=len(self._queue),
                last_batch_size=self._last_batch,
                max_batch=self.max_batch,
                steps=self._steps,
                prompt_tokens=self._prompt_tokens,
                generated_tokens=self._generated,
                backend=self.backend,
            )

    # --- the scheduler thread ---

    def _loop(self) -> None:
        admitted: list[RequestHandle] = []  # between the queue and a row: failed too if a step dies
        try:
            with torch.inference_mode():
                while True:
                    with self._lock:
                        while self._running and not self._queue and not self._rows:
                            self._lock.wait()
                        if not self._running:
                            return
                        admitted = self._admit()
                    if admitted:
                        self._start(admitted)
                    self._retire()
                    if self._rows:
                        self._decode()
                    self._retire()
        except BaseException as e:  # fail every request rather than leave its reader waiting
            log.exception("engine %s failed", self.name)
            with self._lock:
                self._running, self._stopped = False, True
                self.failure = e
                rows = [r.handle for r in self._rows]
                handles = rows + [h for h in admitted if h not in rows] + list(self._queue)
                self._rows.clear()
                self._queue.clear()
            for handle in handles:
                handle._fail(e)

    def _admit(self) -> list[RequestHandle]:
        """Waiting requests for the free rows, within the prefill budget (under the lock)."""
        admitted: list[RequestHandle] = []
        longest = 0
        while self._queue and len(self._rows) + len(admitted) < self.max_batch:
            handle = self._queue[0]
            if handle.cancelled:
                self._queue.popleft()
                handle._emit(TokenEvent(None, finish_reason="cancelled"))
                continue
            width = max(longest, handle.prompt_tokens)
            if admitted and width * (len(admitted) + 1) > self.prefill_tokens:
                break
            longest = width
            admitted.append(self._queue.popleft())
        return admitted

    def _start(self, handles: list[RequestHandle]) -> None:
        """Give admitted requests rows: short prompts are fed through the decode steps, the rest prefilled."""
        vocab = self.config.vocab_size
        fed = [h for h in handles if h.prompt_tokens <= self.feed_tokens]
        for h in fed:
            sampler = SequenceSampler(h.params, h.prompt, vocab, self.device)
            self._rows.append(_Row(h, sampler, 0, next_token=h.prompt[0], prompt_left=deque(h.prompt[1:])))
        self._prompt_tokens += sum(h.prompt_tokens for h in fed)
        if len(fed) < len(handles):
            self._prefill([h for h in handles if h.prompt_tokens > self.feed_tokens])

    def _prefill(self, handles: list[RequestHandle]) -> None:
        """Prefill the admitted prompts together, into the rows after the active ones; pick first tokens."""
        start, count = len(self._rows), len(handles)
        view = self.cache.rows(start, count)
        view.lengths.zero_()
        width = max(h.prompt_tokens for h in handles)
        idx = torch.zeros(count, width, dtype=torch.long)
        for i, h in enumerate(handles):
            idx[i, : h.prompt_tokens] = torch.tensor(h.prompt)
        lengths = torch.tensor([h.prompt_tokens for h in handles], device=self.device)
        view.fit_window(width)
        hidden, _ = self.model.hidden(idx.to(self.device), kv_cache=view)
        view.advance(lengths)
        logits = self.model.lm_head(hidden[torch.arange(count, device=self.device), lengths - 1])
        vocab = self.config.vocab_size
        for h in handles:
            sampler = SequenceSampler(h.params, h.prompt, vocab, self.device)
            self._rows.append(_Row(h, sampler, h.prompt_tokens, next_token=0))
        self._prompt_tokens += sum(h.prompt_tokens for h in handles)
        self._choose(self._rows[start:], logits)

    def _decode(self) -> None:
        """One decode step for every active row that has not finished."""
        n = len(self._rows)
        if self._view is None or self._view.batch_size != n:  # rebuilt only when the batch resizes
            self._view = self.cache.rows(0, n)
            self._live = torch.ones(n, dtype=torch.long, device=self.device)
        view = self._view
        idx = torch.tensor([r.next_token for r in self._rows], device=self.device)[:, None]
        view.fit_window(max(r.length for r in self._rows) + 1)
        if self._team is None:
            logits = self._decode_step(idx, view, self._live)
        else:
            assert isinstance(self._decode_step, NativeDecodeStep)  # only the native step has a team
            size, started = self._team.pick(n), time.perf_counter()
            logits = self._decode_step(idx, view, self._live, threads=size)
            self._team.record(n, size, time.perf_counter() - started)
        ready = []  # rows whose logits give their next token: all but those still feeding a prompt
        for i, r in enumerate(self._rows):
            r.length += 1
            if r.prompt_left:
                r.next_token = r.prompt_left.popleft()
            else:
                ready.append(i)
        self._steps += 1
        self._last_batch = n
        if len(ready) == n:
            self._choose(self._rows, logits)
        elif ready:
            self._choose([self._rows[i] for i in ready], logits[ready])

    def _choose(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Pick each row's next token from its logits (len(rows), V) and emit it."""
        greedy = logits.argmax(-1).tolist() if all(r.sampler.plain_greedy for r in rows) else None
        for i, row in enumerate(rows):
            handle = row.handle
            if handle.cancelled:
                continue  # retired (with its "cancelled" event) by the next `_retire`
            try:
                token = greedy[i] if greedy is not None else row.sampler.choose(logits[i])
                logprob, top = None, None
                if handle.logprobs is not None:
                    logprob, top = token_logprobs(logits[i], token, handle.logprobs)
            except Exception as e:  # this request's problem: it fails, the batch decodes on
                log.exception("engine %s: choosing a token failed for one request", self.name)
                handle._fail(e)
                continue  # retired by the next `_retire`
            if token in handle.params.stop_token_ids:
                handle._emit(TokenEvent(None, finish_reason="stop"))
                continue
            row.sampler.accept(token)
            row.next_token = token
            last = handle.completion_tokens + 1 >= handle.max_new_tokens
            handle._emit(TokenEvent(token, logprob, top, "length" if last else None))
            self._generated += 1

    def _retire(self) -> None:
        """Free the rows of finished and cancelled requests, moving the last active rows into them."""
        for i in range(len(self._rows) - 1, -1, -1):
            handle = self._rows[i].handle
            if handle.cancelled and not handle.done:
                handle._emit(TokenEvent(None, finish_reason="cancelled"))
            if not handle.done:
                continue
            elapsed = time.perf_counter() - handle.submitted_at
            self._mean_request_s = 0.9 * self._mean_request_s + 0.1 * elapsed
            last = len(self._rows) - 1
            if i != last:
                self.cache.move_row(last, i, self._rows[last].length)
                self._rows[i] = self._rows[last]
            else:
                self.cache.reset(last)
            with self._lock:
                self._rows.pop()
