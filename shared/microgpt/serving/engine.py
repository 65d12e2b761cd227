"""Continuous batching: concurrent requests share one model, one decode step at a time.

    engine = BatchEngine(model, max_batch=32)
    engine.start()
    handle = engine.submit(prompt_ids, SamplingParams(max_new_tokens=64, seed=1))
    for event in handle:            # or `async for event in handle` inside an event loop
        ...                         # TokenEvent(token_id, logprob, top_logprobs, finish_reason)
    engine.stop()

Design (vLLM's continuous batching at nanochat's scale; the engine speaks token ids):
- The rows, prefill, decode step and token choice are `microgpt.generate.Engine`'s, the
  one core that `generate()` drives in-process too; this module adds the thread, the
  queue, admission, cancellation and the readers' handles (a `RequestHandle` is that
  core's `Request`). Its KV cache is preallocated for `max_batch` rows at the full
  context; active requests hold rows 0..n-1, so one stream pays for one row.
- A scheduler thread loops: admit waiting requests into the free rows, then retire
  finished and cancelled rows and run ONE decode step for all active rows (the native
  C++ step on CPU when the model allows, else eager). Requests join between steps;
  nobody waits for a batch to drain.
- Admission: under the native step a short prompt (up to `feed_tokens`) rides along in
  the decode steps, one token a step, so admitting it costs the running streams nothing
  (a one-token prompt gets its first token from the very next step). Longer prompts are
  prefilled together by the eager model, right-padded, up to `prefill_tokens` padded
  tokens a step, which is cheaper than feeding them token by token.
- Stop strings are the caller's (it decodes text, then cancels).
- Backpressure: at most `max_queue` requests wait, then `submit` raises `QueueFullError`
  with a retry-after estimate. A bad prompt is a `ValueError` (`microgpt.generate.check_prompt`).
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
from dataclasses import dataclass
from typing import Literal

import torch

from microgpt.config import GPTConfig
from microgpt.generate import Backend, Engine, Request, TokenEvent, activation_device_and_dtype
from microgpt.model import GPT
from microgpt.sampling import SamplingParams
from microgpt.serving.threads import TeamSizer

log = logging.getLogger(__name__)


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


class RequestHandle(Request):
    """One request's token events, readable from a thread (`for`) or a coroutine (`async for`).

    Leaving the loop early (break, an exception, a disconnected client's cancelled task)
    cancels the request, so its row is freed at the next step.
    """

    def __init__(
        self, prompt: Sequence[int], params: SamplingParams, config: GPTConfig, *, logprobs: int | None = None
    ) -> None:
        super().__init__(prompt, params, config, logprobs=logprobs)
        self.time_to_first_token: float | None = None  # seconds from submit to the first event
        self._events: deque[TokenEvent] = deque()
        self._cond = threading.Condition()
        self._wakers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._woken = False  # a wake-up is on its way to the async readers: no need for another

    def __iter__(self) -> Iterator[TokenEvent]:
        finished = False
        try:
            while True:
                with self._cond:
                    while not self._events and self.error is None:
                        self._cond.wait()
                    if not self._events:
                        raise EngineError(str(self.error)) from self.error
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
                    batch, error = list(self._events), self.error
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

    def emit(self, event: TokenEvent) -> None:
        if self.time_to_first_token is None:
            self.time_to_first_token = time.perf_counter() - self.submitted_at
        super().emit(event)
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()
            self._wake()

    def fail(self, error: BaseException) -> None:
        """Hand the error to the reader (an `EngineError`), instead of raising it in the engine."""
        with self._cond:
            self.error = error
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
        self.backend = resolve_backend(model, backend)
        # The native step's team: 1 or `threads` (default torch's count), whichever is faster now.
        team = TeamSizer(threads or torch.get_num_threads()) if self.backend == "native" else None
        self.core = Engine(
            model, max_batch=max_batch, backend=self.backend, feed_tokens=feed_tokens, team=team, name=name
        )
        self._queue: deque[RequestHandle] = deque()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._running = self._stopped = False
        self.failure: BaseException | None = None  # why the scheduler died, if it did
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
            leftover = [*self.core.clear(), *self._queue]
            self._queue.clear()
        for request in leftover:
            request.emit(TokenEvent(None, finish_reason="cancelled"))

    def submit(
        self, prompt_ids: Sequence[int], params: SamplingParams, *, logprobs: int | None = None
    ) -> RequestHandle:
        """Queue a request; its events arrive on the returned handle."""
        handle = RequestHandle(prompt_ids, params, self.config, logprobs=logprobs)
        if handle.ends_at_once():
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
        return len(self.core.rows)

    @property
    def stats(self) -> EngineStats:
        core = self.core
        with self._lock:
            return EngineStats(
                running=len(core.rows),
                queued=len(self._queue),
                last_batch_size=core.last_batch_size,
                max_batch=self.max_batch,
                steps=core.steps,
                prompt_tokens=core.prompt_tokens,
                generated_tokens=core.generated_tokens,
                backend=self.backend,
            )

    # --- the scheduler thread ---

    def _loop(self) -> None:
        admitted: list[RequestHandle] = []  # between the queue and a row: failed too if a step dies
        try:
            with torch.inference_mode():
                while True:
                    with self._lock:
                        while self._running and not self._queue and not self.core.rows:
                            self._lock.wait()
                        if not self._running:
                            return
                        admitted = self._admit()
                    if admitted:
                        self.core.submit(admitted)
                    for request in self.core.step():
                        elapsed = time.perf_counter() - request.submitted_at
                        self._mean_request_s = 0.9 * self._mean_request_s + 0.1 * elapsed
        except BaseException as e:  # fail every request rather than leave its reader waiting
            log.exception("engine %s failed", self.name)
            with self._lock:
                self._running, self._stopped = False, True
                self.failure = e
                rows = self.core.clear()
                requests = rows + [h for h in admitted if h not in rows] + list(self._queue)
                self._queue.clear()
            for request in requests:
                request.fail(e)

    def _admit(self) -> list[RequestHandle]:
        """Waiting requests for the free rows, within the prefill budget (under the lock)."""
        admitted: list[RequestHandle] = []
        longest = 0
        while self._queue and len(admitted) < self.core.free_rows:
            handle = self._queue[0]
            if handle.ending is not None:
                self._queue.popleft()
                handle.emit(TokenEvent(None, finish_reason=handle.ending))
                continue
            width = max(longest, handle.prompt_tokens)
            if admitted and width * (len(admitted) + 1) > self.prefill_tokens:
                break
            longest = width
            admitted.append(self._queue.popleft())
        return admitted
