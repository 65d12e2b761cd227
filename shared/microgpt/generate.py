"""Token-level generation: batched decoding over the KV cache, or by full recompute.

The engine speaks token ids only; text, stop strings and chat templates live in
`microgpt.textgen` and the services. `Decoder` is the one loop: it prefills a
right-padded batch, then decodes one token per row per step, each row with its
own sampling parameters, seeded generator and length limit. `generate` and
`stream` are thin wrappers over it. `use_cache=False` recomputes the whole
sequence every step; tests use it as the ground truth for the cache.

The one-token decode step has three backends, all for inference (their speed-ups
assume the weights no longer change):
- `eager`: PyTorch ops, any device; the reference for the other two.
- `compiled`: TorchInductor with the weights frozen as constants and autotuned
  matmul kernels (AMX / AVX-512 micro-GEMMs on CPU, Triton on GPU); compiles once
  per model, batch size and attention window (about a minute on 2 CPU cores).
- `native`: `microgpt.native`, one C++ call per token on CPU (fp32 or bf16).

A row may produce at most `block_size - len(prompt) + 1` tokens (the last one is
never fed back), so `max_new_tokens` is capped at the context, as vLLM does.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from microgpt.kv_cache import KVCache
from microgpt.model import GPT
from microgpt.sampling import SamplingParams, SequenceSampler

FinishReason = Literal["stop", "length"]
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


@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None


def check_prompt(prompt: Sequence[int], model: GPT) -> None:
    """A prompt must be non-empty, fit the context and use known token ids."""
    block, vocab = model.config.block_size, model.config.vocab_size
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token (e.g. BOS)")
    if len(prompt) > block:
        raise ValueError(f"the prompt has {len(prompt)} tokens, more than the context of {block}")
    if min(prompt) < 0 or max(prompt) >= vocab:
        raise ValueError(f"the prompt has token ids outside the vocabulary [0, {vocab})")


class Decoder:
    """One batch of sequences decoding together; call `step()` until it returns None."""

    def __init__(
        self,
        model: GPT,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams],
        *,
        use_cache: bool = True,
        backend: Backend = "eager",
    ) -> None:
        if not prompts:
            raise ValueError("no prompts given")
        for prompt in prompts:
            check_prompt(prompt, model)
        self.params = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(self.params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(self.params)} sampling parameter sets")
        if backend != "eager" and not use_cache:
            raise ValueError(f"the {backend} backend needs use_cache=True")
        self.model = model
        self._decode_step = make_decode_step(model, backend)
        self.device, _ = activation_device_and_dtype(model)
        block = model.config.block_size
        self.prompts = [list(prompt) for prompt in prompts]
        self.limits = [
            min(sp.max_new_tokens, block - len(pr) + 1) for sp, pr in zip(self.params, self.prompts)
        ]
        self.results = [Generation() for _ in prompts]
        vocab = model.config.vocab_size
        self.samplers = [
            SequenceSampler(sp, pr, vocab, self.device) for sp, pr in zip(self.params, self.prompts)
        ]
        self._plain_greedy = all(s.plain_greedy for s in self.samplers)
        self.cache = None
        if use_cache:
            cache_len = min(block, max(len(pr) + n for pr, n in zip(self.prompts, self.limits)))
            dtype = cache_dtype(model, backend)
            self.cache = KVCache(model.config, len(prompts), cache_len, device=self.device, dtype=dtype)
        self._logits: torch.Tensor | None = None
        self._live = torch.ones(len(prompts), dtype=torch.long, device=self.device)  # rows still decoding
        for row, limit in enumerate(self.limits):
            if limit == 0:
                self.finish(row, "length")

    @property
    def done(self) -> bool:
        return all(r.finish_reason is not None for r in self.results)

    def finish(self, row: int, reason: FinishReason) -> None:
        """Retire a row (its limit, a stop token, or a caller's stop string)."""
        if self.results[row].finish_reason is None:
            self.results[row].finish_reason = reason
            self._live[row] = 0
            if self.cache is not None:
                self.cache.reset(row)  # a retired row keeps writing harmlessly at position 0

    @torch.inference_mode()
    def step(self) -> list[int | None] | None:
        """Choose one token for every live row; None for retired rows; None when all are done."""
        if self.done:
            return None
        logits = self._next_logits()
        # All rows greedy without penalties: one argmax for the batch instead of one per row.
        picks = logits.argmax(-1).tolist() if self._plain_greedy else None
        chosen: list[int | None] = [None] * len(self.results)
        for row, result in enumerate(self.results):
            if result.finish_reason is not None:
                continue
            sampler = self.samplers[row]
            token = picks[row] if picks else sampler.choose(logits[row])
            if token in sampler.params.stop_token_ids:
                self.finish(row, "stop")
                continue
            chosen[row] = token
            result.tokens.append(token)
            sampler.accept(token)
            if len(result.tokens) >= self.limits[row]:
                self.finish(row, "length")
        return chosen

    def _next_logits(self) -> torch.Tensor:
        """Logits (B, V) at the last position of every row."""
        model = self.model
        if self.cache is None:
            # Retired rows are fed their prompt only: their logits are not used.
            sequences = [
                pr + r.tokens if r.finish_reason is None else pr for pr, r in zip(self.prompts, self.results)
            ]
            idx, lengths = self._pad(sequences)
            h, _ = model.hidden(idx)
            return model.lm_head(h[torch.arange(len(sequences)), lengths - 1])
        if self._logits is None:  # prefill
            idx, lengths = self._pad(self.prompts)
            self.cache.fit_window(idx.shape[1])
            h, _ = model.hidden(idx, kv_cache=self.cache)
            self.cache.advance(lengths)
            self._logits = model.lm_head(h[torch.arange(len(lengths)), lengths - 1])
            return self._logits
        last = [r.tokens[-1] if r.finish_reason is None else 0 for r in self.results]
        idx = torch.tensor(last, device=self.device)[:, None]
        live_lengths = [
            len(p) + len(r.tokens) for p, r in zip(self.prompts, self.results) if r.finish_reason is None
        ]
        self.cache.fit_window(max(live_lengths))  # retired rows sit at position 0
        self._logits = self._decode_step(idx, self.cache, self._live)
        return self._logits

    def _pad(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad token lists into (B, T) ids and their lengths (B,)."""
        width = max(len(s) for s in sequences)
        idx = torch.zeros(len(sequences), width, dtype=torch.long)
        for row, s in enumerate(sequences):
            idx[row, : len(s)] = torch.tensor(s)
        lengths = torch.tensor([len(s) for s in sequences])
        return idx.to(self.device), lengths.to(self.device)


def generate(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | Sequence[SamplingParams],
    *,
    use_cache: bool = True,
    backend: Backend = "eager",
) -> list[Generation]:
    """Decode a batch of prompts to completion."""
    decoder = Decoder(model, prompts, params, use_cache=use_cache, backend=backend)
    while decoder.step() is not None:
        pass
    return decoder.results


def stream(
    model: GPT,
    prompt: Sequence[int],
    params: SamplingParams,
    *,
    use_cache: bool = True,
    backend: Backend = "eager",
) -> Iterator[int]:
    """Yield the tokens of one prompt as they are chosen."""
    decoder = Decoder(model, [prompt], params, use_cache=use_cache, backend=backend)
    while (chosen := decoder.step()) is not None:
        if chosen[0] is not None:
            yield chosen[0]
