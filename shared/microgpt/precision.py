"""The precisions a model can be loaded at, named once for the CLI, settings, services and benchmarks.

fp32 and bf16 cast the float weights; int8 and int4 are weight-only quantization
(`microgpt.quantize`). This module imports nothing heavy, so settings and HTTP schemas can
use it without torch.
"""

from __future__ import annotations

from typing import Literal, get_args

Precision = Literal["fp32", "bf16", "int8", "int4"]
Mode = Literal["int8", "int4"]  # the quantized precisions
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
MODES: tuple[Mode, ...] = get_args(Mode)
