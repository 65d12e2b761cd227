"""Token-level generation: one engine decodes requests in the rows of a KV cache.

The engine speaks token ids only; text, stop strings and chat templates live in
`microgpt.textgen` and the services. `Engine` is the one core, synchronous and
single-threaded: `submit` gives requests rows (a right-padded prefill picks their
first tokens), `step` retires ended rows, moving the last rows into their places so a
step runs on rows 0..n-1, and decodes one token for every row, each with its own
sampling parameters, seeded generator and length limit. `generate` and `stream` drive
it in-process; `microgpt.serving.BatchEngine` drives it from a scheduler thread for
concurrent callers. `use_cache=False` recomputes the whole sequence every step; tests
use it as the ground truth for the cache.

The one-token decode step has three backends, all for inference (their speed-ups
assume the weights no longer change):
- `eager`: PyTorch ops, any device; the reference for the other two.
- `compiled`: TorchInductor with the weights frozen as constants and autotuned
  matmul kernels (AMX / AVX-512 micro-GEMMs on CPU, Triton on GPU); compiles once
  per model, batch size and attention window (about a minute on 2 CPU cores).
- `native`: `microgpt.native`, one C++ call per token on CPU (fp32 or bf16). Under it
  a prompt of up to `feed_tokens` tokens may ride along in the decode steps, one token
  a step, instead of being prefilled by the eager model.

A request may produce at most `block_size - len(prompt) + 1` tokens (the last one is
never fed back), so `max_new_tokens` is capped at the context, as vLLM does. A stop
token (`stop_token_ids`, e.g. EOS) ends a request with finish_reason "stop" and is
never emitted.
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, cast

import torch

from microgpt.config import GPTConfig
from microgpt.kv_cache import KVCache
from microgpt.model import GPT
from microgpt.sampling import SamplingParams, SequenceSampler, token_logprobs
from microgpt.serving.threads import TeamSizer

if TYPE_CHECKING:
    from microgpt.native import NativeDecodeStep

log = logging.getLogger(__name__)

Backend = Literal["eager", "compiled", "native"]
BACKENDS: tuple[Backend, ...] = ("eager", "compiled", "native")
DecodeStep = Callable[[torch.Tensor, KVCache, torch.Tensor], torch.Tensor]


def decode_step(model: GPT, idx: torch.Tensor, cache: KVCache, live: torch.Tensor) -> torch.Tensor:
    """Feed one token per row (B, 1), advance the live rows, return next-token logits (B, V)."""
    h, _ = model.hidden(idx, kv_cache=cache)
    cache.advance(live)
    return model.lm_head(h[:, -1])


_compiled_steps: weakref.WeakKeyDictionary[GPT, DecodeStep] = weakref.WeakKeyDictionary()


def compiled_decode_step(model: GPT) -> DecodeStep:
    """`decode_step` compiled for inference, shared by every decoder of this model."""
    if model not in _compiled_steps:
        # The model is closed over, not passed in, so its weights are constants to freeze.
        compiled = torch.compile(
            functools.partial(decode_step, model),
            fullgraph=True,
            dynamic=False,
            options={
                "max_autotune": True,
                "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe,
            },
        )
        seen: set[tuple[int, int, int]] = set()

        def step(idx: torch.Tensor, cache: KVCache, live: torch.Tensor) -> torch.Tensor:
            shape = (*idx.shape, cache.window)
            if shape in seen:
                return compiled(idx, cache, live)
            seen.add(shape)
            # A new shape compiles. Inductor reads these settings outside the per-compile
            # options, so they are patched around this call (patching costs ~40 us a call).
            with torch._inductor.config.patch(freezing=True, autotune_num_choices_displayed=0):
                return compiled(idx, cache, live)

        _compiled_steps[model] = step
    return _compiled_steps[model]


def make_decode_step(model: GPT, backend: Backend) -> DecodeStep:
    if backend == "eager":
        return functools.partial(decode_step, model)
    if backend == "compiled":
        return compiled_decode_step(model)
    if backend == "native":
        from microgpt.native import native_decode_step

        return native_decode_step(model)
    raise ValueError(f"unknown decode backend {backend!r}; choose from {', '.join(BACKENDS)}")


def activation_device_and_dtype(model: GPT) -> tuple[torch.device, torch.dtype]:
    """Where the model computes and in which dtype: that of its first floating-point parameter.

    A quantized model (`microgpt.quantize`) keeps its norms and biases in fp32 and
    computes in fp32; one with no float parameter left at all computes in fp32.
    """
    tensors = [*model.parameters(), *model.buffers()]
    floats = [p for p in model.parameters() if p.is_floating_point()]
    return tensors[0].device, floats[0].dtype if floats else torch.float32


def cache_dtype(model: GPT, backend: Backend) -> torch.dtype:
    """The KV cache's dtype: the native step's own (bf16 for int8 weights), else the activations'."""
    if backend == "native":
        from microgpt.native import native_decode_step

        return native_decode_step(model).dtype
    return activation_device_and_dtype(model)[1]


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


def check_prompt(prompt: Sequence[int], config: GPTConfig) -> None:
    """A prompt must be non-empty, fit the context (worded as OpenAI's) and use known token ids."""
    block, vocab = config.block_size, config.vocab_size
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token (e.g. BOS)")
    if len(prompt) > block:
        raise ValueError(
            f"This model's maximum context length is {block} tokens; your prompt has {len(prompt)} tokens"
        )
    if min(prompt) < 0 or max(prompt) >= vocab:
        raise ValueError(f"the prompt has token ids outside the vocabulary [0, {vocab})")


class Request:
    """One sequence for the engine: a checked prompt, its sampling parameters, and its output so far.

    The engine reports to it through `emit` and `fail`; a subclass passes the events on
    (`microgpt.serving.RequestHandle` to another thread's reader).
    """

    def __init__(
        self, prompt: Sequence[int], params: SamplingParams, config: GPTConfig, *, logprobs: int | None = None
    ) -> None:
        self.prompt = [int(t) for t in prompt]
        check_prompt(self.prompt, config)
        if logprobs is not None and not 0 <= logprobs <= MAX_LOGPROBS:
            raise ValueError(f"logprobs must be between 0 and {MAX_LOGPROBS}, got {logprobs}")
        self.params, self.logprobs = params, logprobs
        # The last token chosen is never fed back, so a row holds prompt + new - 1 tokens.
        self.max_new_tokens = min(params.max_new_tokens, config.block_size - len(self.prompt) + 1)
        self.submitted_at = time.perf_counter()
        self.tokens: list[int] = []
        self.finish_reason: FinishReason | None = None
        self.error: BaseException | None = None
        self.ending: FinishReason | None = None  # asked for by `cancel`, taken at the engine's next step

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt)

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)

    @property
    def cancelled(self) -> bool:
        return self.ending is not None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    def cancel(self, reason: FinishReason = "cancelled") -> None:
        """End this request at the engine's next step, with `reason` ("stop" for a stop string
        that the caller found in the text); its row is freed then."""
        self.ending = self.ending or reason

    def ends_at_once(self) -> bool:
        """A request with no token to make (`max_new_tokens=0`) ends now, with "length", needing no row."""
        if self.max_new_tokens == 0 and not self.done:
            self.emit(TokenEvent(None, finish_reason="length"))
        return self.done

    def emit(self, event: TokenEvent) -> None:
        if event.token_id is not None:
            self.tokens.append(event.token_id)
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason

    def fail(self, error: BaseException) -> None:
        """Choosing this request's token raised `error`; here it propagates to the synchronous caller."""
        self.error = error
        raise error


@dataclass
class _Row:
    """A request holding a cache row: its index in `Engine.rows` is the row."""

    request: Request
    sampler: SequenceSampler
    length: int  # tokens in the cache
    next_token: int  # the token to feed at the next decode step
    prompt_left: deque[int] = field(default_factory=deque)  # prompt tokens still to feed after it


class Engine:
    """Decodes requests in the rows of one KV cache, one step for all rows at a time (module docstring)."""

    def __init__(
        self,
        model: GPT,
        *,
        max_batch: int,
        max_len: int | None = None,
        backend: Backend = "eager",
        use_cache: bool = True,
        feed_tokens: int = 0,
        team: TeamSizer | None = None,
        name: str = "",
    ) -> None:
        if backend != "eager" and not use_cache:
            raise ValueError(f"the {backend} backend needs use_cache=True")
        if team is not None and backend != "native":
            raise ValueError("only the native step has a team of threads to size")
        self.model, self.config, self.name = model, model.config, name
        self.max_batch, self.backend = max_batch, backend
        self.feed_tokens = feed_tokens if backend == "native" else 0
        self.team = team
        self.device, _ = activation_device_and_dtype(model)
        self._decode_step = make_decode_step(model, backend)
        self.cache: KVCache | None = None
        if use_cache:
            dtype = cache_dtype(model, backend)
            self.cache = KVCache(self.config, max_batch, max_len, device=self.device, dtype=dtype)
        self.rows: list[_Row] = []
        self._view: KVCache | None = None  # `cache.rows` of the rows in use, kept while their count holds
        self._live = torch.ones(0, dtype=torch.long)
        self.steps = self.prompt_tokens = self.generated_tokens = self.last_batch_size = 0

    @property
    def free_rows(self) -> int:
        return self.max_batch - len(self.rows)

    @torch.inference_mode()
    def submit(self, requests: Sequence[Request]) -> None:
        """Give requests rows: prompts of up to `feed_tokens` are fed through the decode steps,
        the rest prefilled together, right-padded, which picks their first tokens."""
        starting = [r for r in requests if not r.ends_at_once()]
        if len(starting) > self.free_rows:
            raise ValueError(f"{len(starting)} requests for {self.free_rows} free rows")
        fed = [r for r in starting if r.prompt_tokens <= self.feed_tokens]
        for r in fed:
            row = _Row(r, self._sampler(r), 0, next_token=r.prompt[0], prompt_left=deque(r.prompt[1:]))
            self.rows.append(row)
        self.prompt_tokens += sum(r.prompt_tokens for r in fed)
        if len(fed) < len(starting):
            self._prefill([r for r in starting if r.prompt_tokens > self.feed_tokens])

    @torch.inference_mode()
    def step(self) -> list[Request]:
        """Free the rows of ended requests, run one decode step for the rest, free again;
        return the requests whose rows were freed."""
        ended = self._retire()
        if self.rows:
            self._decode()
        return ended + self._retire()

    def drain(self) -> Iterator[None]:
        """Yield now and after every step until no row is in use: in between, the requests'
        tokens have grown and the caller may end some (`Request.cancel`)."""
        yield
        while self.rows:
            self.step()
            yield

    def clear(self) -> list[Request]:
        """Free every row at once (the engine stops); return their requests for the caller to end."""
        requests = [r.request for r in self.rows]
        self.rows.clear()
        if self.cache is not None:
            self.cache.reset()
        return requests

    def _sampler(self, request: Request) -> SequenceSampler:
        return SequenceSampler(request.params, request.prompt, self.config.vocab_size, self.device)

    def _prefill(self, requests: list[Request]) -> None:
        """Prefill the prompts together into the rows after those in use; pick their first tokens."""
        start = len(self.rows)
        self.rows += [_Row(r, self._sampler(r), r.prompt_tokens, next_token=0) for r in requests]
        self.prompt_tokens += sum(r.prompt_tokens for r in requests)
        view = None if self.cache is None else self.cache.rows(start, len(requests))
        if view is not None:
            view.reset()
        logits = self._last_logits([r.prompt for r in requests], view)
        self._choose(self.rows[start:], logits)

    def _decode(self) -> None:
        """One decode step for every row in use."""
        n = len(self.rows)
        if self.cache is None:  # recompute every row's whole sequence: the cache's ground truth
            logits = self._last_logits([r.request.prompt + r.request.tokens for r in self.rows])
        else:
            if self._view is None or self._view.batch_size != n:  # rebuilt only when the batch resizes
                self._view = self.cache.rows(0, n)
                self._live = torch.ones(n, dtype=torch.long, device=self.device)
            view = self._view
            idx = torch.tensor([r.next_token for r in self.rows], device=self.device)[:, None]
            view.fit_window(max(r.length for r in self.rows) + 1)
            if self.team is None:
                logits = self._decode_step(idx, view, self._live)
            else:
                native = cast("NativeDecodeStep", self._decode_step)  # only it has a team (see __init__)
                size, started = self.team.pick(n), time.perf_counter()
                logits = native(idx, view, self._live, threads=size)
                self.team.record(n, size, time.perf_counter() - started)
        ready = []  # rows whose logits give their next token: all but those still feeding a prompt
        for i, r in enumerate(self.rows):
            r.length += 1
            if r.prompt_left:
                r.next_token = r.prompt_left.popleft()
            else:
                ready.append(i)
        self.steps += 1
        self.last_batch_size = n
        if len(ready) == n:
            self._choose(self.rows, logits)
        elif ready:
            self._choose([self.rows[i] for i in ready], logits[ready])

    def _last_logits(self, sequences: list[list[int]], cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, V) at the last token of each sequence, run right-padded (through `cache`, if given)."""
        idx = torch.zeros(len(sequences), max(len(s) for s in sequences), dtype=torch.long)
        for row, s in enumerate(sequences):
            idx[row, : len(s)] = torch.tensor(s)
        idx, lengths = idx.to(self.device), torch.tensor([len(s) for s in sequences], device=self.device)
        if cache is not None:
            cache.fit_window(idx.shape[1])
        hidden, _ = self.model.hidden(idx, kv_cache=cache)
        if cache is not None:
            cache.advance(lengths)
        return self.model.lm_head(hidden[torch.arange(len(sequences), device=self.device), lengths - 1])

    def _choose(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Pick each row's next token from its logits (len(rows), V) and emit it."""
        # All rows greedy without penalties: one argmax for the batch instead of one per row.
        greedy = logits.argmax(-1).tolist() if all(r.sampler.plain_greedy for r in rows) else None
        for i, row in enumerate(rows):
            request = row.request
            if request.cancelled:
                continue  # ended (with its event) by the next `_retire`
            try:
                token = greedy[i] if greedy is not None else row.sampler.choose(logits[i])
                logprob, top = None, None
                if request.logprobs is not None:
                    logprob, top = token_logprobs(logits[i], token, request.logprobs)
            except Exception as e:  # this request's problem: it fails, the batch decodes on
                request.fail(e)  # a plain `Request` raises it here, to its synchronous caller
                log.exception("engine %s: choosing a token failed for one request", self.name)
                continue  # its row is freed by the next `_retire`
            if token in request.params.stop_token_ids:
                request.emit(TokenEvent(None, finish_reason="stop"))
                continue
            row.sampler.accept(token)
            row.next_token = token
            last = request.completion_tokens + 1 >= request.max_new_tokens
            request.emit(TokenEvent(token, logprob, top, "length" if last else None))
            self.generated_tokens += 1

    def _retire(self) -> list[Request]:
        """Free the rows of ended and cancelled requests, the last rows in use moving into them."""
        ended = []
        for i in range(len(self.rows) - 1, -1, -1):
            request = self.rows[i].request
            if request.ending is not None and not request.done:
                request.emit(TokenEvent(None, finish_reason=request.ending))
            if not request.done:
                continue
            ended.append(request)
            last = len(self.rows) - 1
            if self.cache is not None:
                self.cache.free_row(i, last, self.rows[last].length)
            self.rows[i] = self.rows[last]
            self.rows.pop()
        return ended


def params_per_prompt(
    params: SamplingParams | Sequence[SamplingParams], prompts: int
) -> list[SamplingParams]:
    """One parameter set for every prompt, or the same one for all."""
    per_row = [params] * prompts if isinstance(params, SamplingParams) else list(params)
    if len(per_row) != prompts:
        raise ValueError(f"{prompts} prompts but {len(per_row)} sampling parameter sets")
    return per_row


def engine_for(
    model: GPT, requests: Sequence[Request], *, use_cache: bool = True, backend: Backend = "eager"
) -> Engine:
    """An engine with a row for each request, and cache room for the longest, started on them."""
    if not requests:
        raise ValueError("no prompts given")
    longest = max(r.prompt_tokens + r.max_new_tokens for r in requests)
    max_len = min(model.config.block_size, longest)
    engine = Engine(model, max_batch=len(requests), max_len=max_len, backend=backend, use_cache=use_cache)
    engine.submit(requests)
    return engine


def generate(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | Sequence[SamplingParams],
    *,
    use_cache: bool = True,
    backend: Backend = "eager",
) -> list[Request]:
    """Decode a batch of prompts to completion; each request's `tokens` and `finish_reason` say how."""
    per_row = params_per_prompt(params, len(prompts))
    requests = [Request(prompt, sp, model.config) for prompt, sp in zip(prompts, per_row)]
    for _ in engine_for(model, requests, use_cache=use_cache, backend=backend).drain():
        pass
    return requests


def stream(
    model: GPT,
    prompt: Sequence[int],
    params: SamplingParams,
    *,
    use_cache: bool = True,
    backend: Backend = "eager",
) -> Iterator[int]:
    """Yield the tokens of one prompt as they are chosen."""
    request = Request(prompt, params, model.config)
    seen = 0
    for _ in engine_for(model, [request], use_cache=use_cache, backend=backend).drain():
        yield from request.tokens[seen:]
        seen = request.completion_tokens
