"""One sequence of one request: the engine's token events as text deltas, with stop strings and timings.

The engine speaks token ids; this is where text begins. Tokens go through
`microgpt.textgen.TextStream`, which holds back any tail that could still become a stop
string, so a stop string is never streamed, not even in part; when one matches, the
engine's handle is cancelled, which frees the slot at the next decode step. Leaving the
iteration early for any reason (the client went away, the task was cancelled) cancels
the handle too. Tokens that queued up while the reader was busy (writing the previous
chunk) come out as one delta, so a slow reader catches up instead of falling further behind.
If the engine fails this sequence (or stops), the deltas raise an `ApiError` 500
`generation_failed` naming the cause: a JSON error for this request, in-band for a stream.
Time to first token and inter-token latency are measured here, where the service hands
tokens on, and fed to the model's histograms (tokens handed on together split the interval).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeGuard

from microgpt.serving.engine import EngineError
from microgpt.textgen import TextStream
from microgpt.tokenizers import Tokenizer
from services.common.errors import ApiError
from services.inference.metrics import InferenceMetrics

if TYPE_CHECKING:
    from microgpt.serving.engine import RequestHandle


# A stream's deltas come at most every 10 ms (the first at once): tokens that arrive in between
# go out together, which spares the CPU the engine decodes on one event-loop wake-up and one
# write per token, unnoticeable to a reader at 100 updates a second. With many streams the
# interval grows so that a model's streams together make at most CHUNKS_PER_S writes a second
# (each costs a send here and a receive in the client, beside the decode step): 32 streams get
# 25 updates a second each. vLLM's `--stream-interval` trades the same way, in tokens.
STREAM_INTERVAL_S = 0.010
CHUNKS_PER_S = 800


def stream_interval(streams: int) -> float:
    """Seconds between one stream's deltas while `streams` streams decode."""
    return max(STREAM_INTERVAL_S, streams / CHUNKS_PER_S)


@dataclass(frozen=True)
class TokenInfo:
    id: int
    logprob: float | None
    top_logprobs: list[tuple[int, float]] | None


@dataclass(frozen=True)
class Delta:
    """Text now safe to show, the tokens that came with it, and on the last delta why it ended."""

    text: str
    tokens: list[TokenInfo]
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"


@dataclass
class Outcome:
    text: str
    tokens: list[TokenInfo]
    finish_reason: str


@dataclass
class Generation:
    """Consume `handle` once, through `deltas()` or `collect()`."""

    handle: RequestHandle
    tokenizer: Tokenizer
    model_id: str
    metrics: InferenceMetrics
    stop: Sequence[str] = ()
    stop_token_ids: Sequence[int] = ()
    strip_leading_space: bool = False  # chat replies lose the space after "Assistant:"
    streams: Callable[[], int] = lambda: 1  # streams decoding now, for `stream_interval`
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None
    completion_tokens: int = 0
    finish_reason: str | None = None
    cancel_requested: bool = False

    @property
    def prompt_tokens(self) -> int:
        return self.handle.prompt_tokens

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.submitted_at

    def cancel(self) -> None:
        """Ask the engine to stop this sequence; the deltas end with finish reason "cancelled"."""
        self.cancel_requested = True
        self.handle.cancel()

    async def deltas(self) -> AsyncIterator[Delta]:
        stream = TextStream(self.tokenizer, self.stop)
        ttft = self.metrics.time_to_first_token.labels(self.model_id)
        itl = self.metrics.inter_token_latency.labels(self.model_id)
        generated = self.metrics.generation_tokens.labels(self.model_id)
        started_text = not self.strip_leading_space
        last = self.submitted_at

        def shown(text: str) -> str:
            nonlocal started_text
            if not started_text and text:
                started_text = True
                return text[1:] if text.startswith(" ") else text
            return text

        def pace() -> float:  # asked after each delta, so the interval follows the load
            return stream_interval(self.streams())

        try:
            async with contextlib.aclosing(self.handle.batches(pace)) as batches:
                async for batch in batches:
                    # Everything that arrived since the last turn becomes one delta: a reader that
                    # fell behind catches up with one chunk instead of one per token.
                    parts: list[str] = []
                    tokens: list[TokenInfo] = []
                    reason: str | None = None
                    for event in batch:
                        if self._is_output(event.token_id):
                            tokens.append(TokenInfo(event.token_id, event.logprob, event.top_logprobs))
                            parts.append(stream.push(event.token_id))
                            if stream.stopped:  # later tokens of the batch are past the stop string
                                self.handle.cancel()
                                reason = "stop"
                                break
                        if event.finish_reason is not None:
                            reason = event.finish_reason
                            parts.append(stream.flush())
                            break
                    if tokens:
                        now = time.perf_counter()
                        if self.first_token_at is None:
                            self.first_token_at = last = now
                            ttft.observe(now - self.submitted_at)
                            later = len(tokens) - 1
                        else:
                            later = len(tokens)
                        # Tokens handed on together share the time since the previous hand-off, so
                        # the histogram still sees one interval per token and their sum is the wall time.
                        for _ in range(later):
                            itl.observe((now - last) / later)
                        last = now
                        self.completion_tokens += len(tokens)
                        generated.inc(len(tokens))
                    text = shown("".join(parts))
                    if reason is not None:
                        self._finish(reason)
                        yield Delta(text, tokens, reason)
                        return
                    if text or tokens:
                        yield Delta(text, tokens)
            reason = "cancelled" if self.cancel_requested else "length"  # ended without saying why
            self._finish(reason)
            yield Delta(shown(stream.flush()), [], reason)
        except EngineError as e:
            raise ApiError(500, "generation_failed", f"generating for {self.model_id} failed: {e}") from e
        finally:
            if self.finish_reason is None:  # left early: free the slot
                self.handle.cancel()
                self._finish("cancelled")

    async def collect(self) -> Outcome:
        parts: list[str] = []
        tokens: list[TokenInfo] = []
        async for delta in self.deltas():
            parts.append(delta.text)
            tokens.extend(delta.tokens)
        return Outcome("".join(parts), tokens, self.finish_reason or "length")

    def _is_output(self, token_id: int | None) -> TypeGuard[int]:
        """A token that belongs to the output (not EOS or a stop token, not a bare end-of-sequence event)."""
        return token_id is not None and token_id >= 0 and token_id not in self.stop_token_ids

    def _finish(self, reason: str) -> None:
        self.finish_reason = reason
        self.finished_at = time.perf_counter()
