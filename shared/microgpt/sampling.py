"""Sampling parameters and the choice of the next token from logits.

The order follows Hugging Face and vLLM: penalties on the raw logits, then
temperature, then the top-k / top-p / min-p filters, then a draw from a seeded
generator (one per sequence, so batched and single decoding pick the same tokens).
`SequenceSampler` holds one sequence's state (generator, token counts for the
penalties); the decoding engine (`microgpt.generate.Engine`) keeps one per row.
Temperature 0 means greedy. Invalid values raise `ValueError` (pydantic's
`ValidationError` is one) naming the field.

Numerical safety: every value the fields admit (a temperature or top_p of 5e-324, a
penalty of 1e300) and every logit (NaN, +-inf) gives a token, never a NaN distribution.
The arithmetic runs in float64, so parameters keep their value instead of rounding to 0
or inf in float32; NaN logits count as -inf; if some logits are +inf, only those tokens
remain (the limit of the distribution); temperature divides logits shifted to a maximum
of 0, so a tiny one tends to greedy instead of overflowing; the filters always keep the
most likely token; and a row whose logits are all -inf falls back to its argmax.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(256, ge=0)
    temperature: float = Field(1.0, ge=0.0, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=1)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    min_p: float = Field(0.0, ge=0.0, lt=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0, allow_inf_nan=False)  # HF/CTRL: >1 discourages seen
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)  # OpenAI: per occurrence
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)  # OpenAI: once per seen token
    stop: list[str] = Field(default_factory=list)  # stop strings, applied on decoded text
    stop_token_ids: list[int] = Field(default_factory=list)  # e.g. EOS; never emitted
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def make_generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """A generator seeded from `seed` (modulo 2**64, torch's range: any int is a seed), or from
        fresh entropy when no seed is given."""
        generator = torch.Generator(device=device)
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed % 2**64)
        return generator


def without_nan(logits: torch.Tensor) -> torch.Tensor:
    """NaN logits become -inf (impossible tokens); if any logit is +inf, those tokens alone
    remain, equally likely (0, the rest -inf): the limit of the distribution, without inf - inf."""
    logits = logits.nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    top = torch.isposinf(logits)
    if top.any():
        return torch.zeros_like(logits).masked_fill(~top, float("-inf"))
    return logits


def apply_penalties(logits: torch.Tensor, counts: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Penalise tokens by how often they already occur; counts is (V,) over prompt and output.

    In float64 a finite positive penalty turns a finite logit into a finite or infinite one,
    never NaN (0 * 1e300 is 0 where float32 would make it 0 * inf)."""
    logits, counts = logits.double(), counts.double()
    if params.repetition_penalty != 1.0:
        seen = counts > 0
        penalised = torch.where(
            logits > 0, logits / params.repetition_penalty, logits * params.repetition_penalty
        )
        logits = torch.where(seen, penalised, logits)
    if params.frequency_penalty or params.presence_penalty:
        logits = logits - params.frequency_penalty * counts - params.presence_penalty * (counts > 0)
    return without_nan(logits)


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, top-p (nucleus) and min-p; removed tokens get -inf (float64).

    The most likely token always survives, so the result has a finite maximum unless every
    logit was -inf."""
    logits = without_nan(logits.double())
    top = logits.max()
    if top == float("-inf"):
        return logits
    shifted = logits - top  # <= 0: dividing by a tiny temperature gives -inf, never +inf
    logits = torch.where(shifted == 0, 0.0, shifted / params.temperature)
    if params.top_k is not None and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs >= params.top_p  # keep the first past p
        drop_sorted[0] = False  # and always the most likely, however small p is
        logits = logits.masked_fill(drop_sorted.scatter(0, order, drop_sorted), float("-inf"))
    if params.min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    return logits


def choose_next(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator, counts: torch.Tensor | None
) -> int:
    """The next token id for one sequence, from its logits (V,)."""
    logits = without_nan(logits.double())
    if counts is not None:
        logits = apply_penalties(logits, counts, params)
    if params.greedy:
        return int(logits.argmax())
    filtered = filter_logits(logits, params)
    top = filtered.max()
    if top == float("-inf"):  # every logit is -inf: nothing to weigh, take the first
        return int(logits.argmax())
    weights = (filtered - top).exp()  # in [0, 1], the best token's 1: no NaN, no overflow
    return int(torch.multinomial(weights, 1, generator=generator))


class SequenceSampler:
    """The sampling state of one sequence: its parameters, seeded generator and token counts.

    Counts over prompt and output are kept only when a penalty needs them.
    """

    def __init__(
        self,
        params: SamplingParams,
        prompt: Sequence[int],
        vocab_size: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.params = params
        self.generator = params.make_generator(device)
        self.counts: torch.Tensor | None = None
        if params.repetition_penalty != 1.0 or params.frequency_penalty or params.presence_penalty:
            self.counts = torch.zeros(vocab_size, device=device)
            self.counts.index_add_(
                0, torch.tensor(list(prompt), device=device), torch.ones(len(prompt), device=device)
            )

    @property
    def plain_greedy(self) -> bool:
        """Greedy without penalties: the argmax of the raw logits, batchable."""
        return self.params.greedy and self.counts is None

    def choose(self, logits: torch.Tensor) -> int:
        """The next token from this sequence's logits (V,)."""
        return choose_next(logits, self.params, self.generator, self.counts)

    def accept(self, token: int) -> None:
        """Record an emitted token (for the penalties)."""
        if self.counts is not None:
            self.counts[token] += 1


def token_logprobs(logits: torch.Tensor, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """Log-probability of `token` and the `top` most likely tokens with theirs, under the
    model's own distribution (raw logits (V,), before penalties, temperature and filters)."""
    logprobs = without_nan(logits.float()).log_softmax(-1)
    best = torch.topk(logprobs, min(top, logprobs.shape[-1])) if top > 0 else None
    pairs = list(zip(best.indices.tolist(), best.values.tolist())) if best is not None else []
    return float(logprobs[token]), pairs
