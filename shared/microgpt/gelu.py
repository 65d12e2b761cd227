"""Tanh-approximated GELU on the CPU: `csrc/gelu.cpp`, one vectorised pass each way.

torch's CPU kernel for `F.gelu(x, approximate="tanh")` costs 2-4x its erf form, forward
and backward (a fifth of a `names` training step); this one runs at the erf form's speed
on fp32 and bf16 tensors and agrees with torch to ~1e-6. Other devices, other dtypes and
code being traced by torch.compile (which fuses GELU itself) use torch's.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from microgpt.cpp import build


def extension() -> ModuleType:
    return build("microgpt_gelu")


class _GeluTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return extension().gelu_forward(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return extension().gelu_backward(x, grad)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """`F.gelu(x, approximate="tanh")`, with the native kernel on the CPU."""
    native = x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
    if not native or torch.compiler.is_compiling():
        return F.gelu(x, approximate="tanh")
    return _GeluTanh.apply(x)
