"""Parity reports: how closely another runtime's logits follow ours on the same tokens.

An export is only as good as the runtime that loads it agreeing with the model it came
from, so each exporter hands its runtime's logits for a batch of token rows to
`compare`, which measures them against the float32 eager model:

- max |Δlogit|: the largest absolute logit difference at any position;
- top-1 agreement: the share of positions where both pick the same next token;
- perplexity change: the other runtime's perplexity on the rows' next tokens relative
  to ours, in percent (quantized GGUF files are judged by this).

The rows are held-out text when the caller has some (tests pass real text), else
`sample_rows` draws them from the model itself with a fixed seed, so the same
checkpoint always gets the same report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from microgpt.model import GPT

# Logits of token rows (batch, time) as float32 (batch, time, vocab), from some runtime.
LogitsFn = Callable[[list[list[int]]], "np.ndarray"]

SAMPLE_ROWS = 4
SAMPLE_SEED = 0


@dataclass(frozen=True)
class ParityReport:
    runtime: str
    positions: int
    max_abs_logit_diff: float
    top1_agreement: float
    perplexity_ours: float
    perplexity_theirs: float

    @property
    def perplexity_change_pct(self) -> float:
        return 100.0 * (self.perplexity_theirs / self.perplexity_ours - 1.0)

    def to_json(self) -> dict[str, float | int | str]:
        return {**asdict(self), "perplexity_change_pct": self.perplexity_change_pct}

    def metrics(self) -> dict[str, float]:
        """The figures a registry version carries, as numbers."""
        return {
            "parity_max_abs_logit_diff": self.max_abs_logit_diff,
            "parity_top1_agreement": self.top1_agreement,
            "parity_perplexity_change_pct": self.perplexity_change_pct,
        }

    def summary(self) -> str:
        return (
            f"{self.runtime}: max |dlogit| {self.max_abs_logit_diff:.2e}, top-1 agreement "
            f"{self.top1_agreement:.1%}, perplexity {self.perplexity_ours:.3f} -> "
            f"{self.perplexity_theirs:.3f} ({self.perplexity_change_pct:+.2f}%) "
            f"over {self.positions} positions"
        )


def eager_logits(model: GPT, rows: Sequence[Sequence[int]]) -> np.ndarray:
    """Our float32 logits for equal-length rows: the reference every runtime is held to."""
    import torch

    with torch.inference_mode():
        return model(torch.tensor([list(r) for r in rows], dtype=torch.long)).logits.float().numpy()


def compare(model: GPT, rows: Sequence[Sequence[int]], theirs: LogitsFn, runtime: str) -> ParityReport:
    """Hold `theirs` to the eager model on `rows` (equal lengths, at most the context)."""
    import numpy as np

    lists = [list(r) for r in rows]
    ours, other = eager_logits(model, lists), np.asarray(theirs(lists), dtype=np.float32)
    if other.shape != ours.shape:
        raise ValueError(f"{runtime} gave logits of shape {other.shape}, ours are {ours.shape}")
    targets = np.asarray(lists)[:, 1:]
    return ParityReport(
        runtime=runtime,
        positions=int(ours.shape[0] * ours.shape[1]),
        max_abs_logit_diff=float(np.abs(ours - other).max()),
        top1_agreement=float((ours.argmax(-1) == other.argmax(-1)).mean()),
        perplexity_ours=_perplexity(ours[:, :-1], targets),
        perplexity_theirs=_perplexity(other[:, :-1], targets),
    )


def _perplexity(logits: np.ndarray, targets: np.ndarray) -> float:
    import numpy as np

    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, targets[..., None], axis=-1)
    return float(math.exp(-picked.mean()))


def sample_rows(model: GPT, length: int | None = None, rows: int = SAMPLE_ROWS) -> list[list[int]]:
    """`rows` sequences of `length` tokens (default: the context, at most 64) sampled from the
    model at temperature 1 with a fixed seed: parity rows when no held-out text is given."""
    import torch

    length = min(length or 64, model.config.block_size)
    generator = torch.Generator().manual_seed(SAMPLE_SEED)
    idx = torch.randint(0, model.config.vocab_size, (rows, 1), generator=generator)
    with torch.inference_mode():
        while idx.shape[1] < length:
            probs = model(idx).logits[:, -1].float().softmax(-1)
            idx = torch.cat([idx, torch.multinomial(probs, 1, generator=generator)], dim=1)
    return idx.tolist()


def greedy(model: GPT, prompt: Sequence[int], new_tokens: int) -> list[int]:
    """Our greedy continuation of `prompt` (argmax over the full forward each step)."""
    import torch

    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(new_tokens):
            window = ids[-model.config.block_size :]
            ids.append(int(model(torch.tensor([window])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def measure(
    model: GPT, rows: Sequence[Sequence[int]] | None, runtime: str, logits: Callable[[], LogitsFn]
) -> ParityReport | None:
    """`compare` through the runtime `logits()` opens, or None when that runtime is not installed."""
    try:
        fn = logits()
    except ImportError:
        return None
    return compare(model, rows if rows is not None else sample_rows(model), fn, runtime)
