"""Head detectors on repeated random tokens, and the cheap probe the training loop records.

A sequence of `seq_len` random tokens followed by the same tokens again: in the second
half a previous-token head attends to position q-1, a duplicate-token head to the earlier
copy of its own token (q-seq_len) and an induction head to the token that followed that
copy (q-seq_len+1), the one to predict. Random tokens rather than text because names and
words barely repeat within a context (TransformerLens' detectors do the same).
"""

from __future__ import annotations

import torch

from microgpt.generate import activation_device_and_dtype
from microgpt.interpret.readouts import attention_entropy
from microgpt.interpret.schemas import HeadsReport
from microgpt.model import GPT

PROBE_SEQ_LEN = 32  # 64 positions in all: enough for a stable score, cheap on the CPU
PROBE_BATCH = 4


@torch.no_grad()
def repeated_patterns(model: GPT, *, seq_len: int, batch: int, seed: int) -> torch.Tensor:
    """Attention (n_layer, batch, n_head, 2*seq_len, 2*seq_len) on repeated random tokens."""
    if seq_len < 2 or batch < 1:
        raise ValueError(f"need seq_len >= 2 and batch >= 1, got {seq_len} and {batch}")
    if 2 * seq_len > model.config.block_size:
        raise ValueError(f"2 * seq_len ({2 * seq_len}) exceeds the context of {model.config.block_size}")
    gen = torch.Generator().manual_seed(seed)
    half = torch.randint(model.config.vocab_size, (batch, seq_len), generator=gen)
    ids = torch.cat([half, half], dim=1).to(activation_device_and_dtype(model)[0])
    was_training = model.training
    model.eval()
    try:
        maps = model.attention_maps(ids)
    finally:
        model.train(was_training)
    return torch.stack(maps).float()


def detector_scores(patterns: torch.Tensor, seq_len: int) -> dict[str, torch.Tensor]:
    """Mean attention (n_layer, n_head) to each detector's key over the second half's queries."""
    q = torch.arange(seq_len, 2 * seq_len, device=patterns.device)

    def mean_at(keys: torch.Tensor) -> torch.Tensor:
        return patterns[..., q, keys].mean(dim=(1, 3))  # average over batch and queries

    return {
        "previous_token": mean_at(q - 1),
        "duplicate_token": mean_at(q - seq_len),
        "induction": mean_at(q - seq_len + 1),
    }


def head_scores(model: GPT, *, seq_len: int = 32, batch: int = 8, seed: int = 0) -> HeadsReport:
    """Previous-token, duplicate-token and induction scores of every head, [layer][head]."""
    scores = detector_scores(repeated_patterns(model, seq_len=seq_len, batch=batch, seed=seed), seq_len)
    chance = float((1.0 / torch.arange(seq_len + 1, 2 * seq_len + 1, dtype=torch.float64)).mean())
    return HeadsReport(
        seq_len=seq_len,
        batch=batch,
        previous_token=scores["previous_token"].tolist(),
        duplicate_token=scores["duplicate_token"].tolist(),
        induction=scores["induction"].tolist(),
        chance=chance,
    )


def probe(model: GPT, *, seed: int = 0) -> dict[str, float]:
    """What the training loop records each `interpret_every` steps (a few ms on a small model).

    {"induction_score": the best head's induction score, "attention_entropy": mean entropy
    (nats) of every head's attention rows}, on the same repeated random tokens each call
    (fixed seed) so successive values are comparable.
    """
    seq_len = min(PROBE_SEQ_LEN, model.config.block_size // 2)
    patterns = repeated_patterns(model, seq_len=seq_len, batch=PROBE_BATCH, seed=seed)
    induction = detector_scores(patterns, seq_len)["induction"]
    return {
        "induction_score": float(induction.max()),
        "attention_entropy": float(attention_entropy(patterns).mean()),
    }
