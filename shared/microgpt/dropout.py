"""Dropout for CPU training: masks from a counter-based hash (`csrc/hash_dropout.cpp`).

torch's CPU dropout draws every mask element from one Mersenne-Twister stream; for the
`shakespeare` preset that was a quarter of a training step (attention probabilities
alone are B x heads x T x T elements per layer). Here a mask is a pure function of
(seed, element index), computed in parallel and vectorized, and regenerated in the
backward pass rather than stored. The seed is drawn from torch's generator, so a run
stays a pure function of its seed and resumes exactly. The drop probability is rounded to a multiple
of 1/65536 (the scale uses the rounded value, so the expectation is unchanged).
Other devices (whose kernels are fast already) and dtypes other than fp32, bf16 and fp64 use
`torch.nn.functional.dropout`.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from microgpt.cpp import build

LANES = 65536  # mask lanes are 16-bit: p is rounded to a multiple of 1/65536
HASHED_DTYPES = (torch.float32, torch.bfloat16, torch.float64)  # the kernel's; others use torch's


def extension() -> ModuleType:
    """Compile (once per machine, then cached) and import the kernel."""
    return build("microgpt_hash_dropout")


def hash_dropout(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """x with each element zeroed with probability ~p, else scaled by 1 / (1 - p); which
    elements are dropped is a pure function of (seed, element index)."""
    threshold = round(p * LANES)
    return extension().hash_dropout(x, threshold, seed, LANES / (LANES - threshold))


class _HashDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
        ctx.p, ctx.seed = p, seed
        return hash_dropout(x, p, seed)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return hash_dropout(grad, ctx.p, ctx.seed), None, None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`F.dropout(x, p, training)`, with hashed masks on the CPU."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or x.dtype not in HASHED_DTYPES or round(p * LANES) >= LANES:
        return F.dropout(x, p, training)
    seed = int(torch.randint(0, 2**62, (1,)).item())  # from torch's generator: runs stay seeded
    return _HashDropout.apply(x, p, seed)


class Dropout(nn.Module):
    """nn.Dropout with `dropout` above."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
