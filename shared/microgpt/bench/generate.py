"""Single-stream decode speed, beside the ceilings measured in the same run.

    microgpt bench generate                      # shakespeare preset, fp32 and bf16
    microgpt bench generate --preset gpt2-small --precision fp32

Random weights are fine: speed does not depend on what the weights say. Each
precision and decode backend runs through the public `microgpt.generate.stream`
API (greedy, KV cache), so the figure includes the engine's per-token overhead,
not just the kernels. "of bandwidth" is the share
of the measured memory bandwidth that streaming every weight once per token
would need at that speed, against the bandwidth measured over a buffer of the
weights' own size (which may sit in a large last-level cache) and over 1 GiB (DRAM).
"""

from __future__ import annotations

import contextlib
import io
import time

import torch

from microgpt.bench.hardware import matmul_peak, memory_bandwidth
from microgpt.generate import Backend, stream
from microgpt.model import GPT
from microgpt.native import kernels
from microgpt.quantize import FLOAT_DTYPES
from microgpt.sampling import SamplingParams
from microgpt.zoo import get_preset


def decode_tokens_per_s(model: GPT, *, tokens: int, runs: int, backend: Backend) -> float:
    """Best tokens/s of a few greedy single-stream generations of `tokens` tokens."""
    params = SamplingParams(temperature=0.0, max_new_tokens=tokens)
    with contextlib.redirect_stderr(io.StringIO()):  # Inductor writes autotuning tables there
        for _ in stream(model, [0], params, backend=backend):  # warm-up (and compile)
            pass
    best = 0.0
    for run in range(runs):
        start = time.perf_counter()
        n = sum(1 for _ in stream(model, [run % model.config.vocab_size], params, backend=backend))
        best = max(best, n / (time.perf_counter() - start))
    return best


def run(
    preset: str,
    precisions: list[str],
    backends: list[Backend],
    *,
    tokens: int,
    runs: int,
    threads: int | None,
) -> None:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = get_preset(preset, model={"dropout": 0.0}).model
    tokens = min(tokens, config.block_size)
    base = GPT(config).eval()
    fp32_bytes = 4 * base.num_params()
    dram = memory_bandwidth()
    working_set = memory_bandwidth(fp32_bytes)
    peaks = {name: matmul_peak(dtype) for name, dtype in FLOAT_DTYPES.items()}
    print(
        f"machine: {torch.get_num_threads()} threads, native kernels {kernels()}; "
        f"read bandwidth {dram / 1e9:.1f} GB/s over 1 GiB, "
        f"{working_set / 1e9:.1f} GB/s over {fp32_bytes / 1e6:.0f} MB; matmul peak fp32 "
        f"{peaks['fp32'] / 1e12:.2f} TFLOP/s, bf16 {peaks['bf16'] / 1e12:.2f} TFLOP/s"
    )
    print(
        f"model: {preset}, {base.num_params() / 1e6:.2f}M parameters, greedy single stream, "
        f"{tokens} tokens per generation, best of {runs}"
    )
    for name in precisions:
        model = GPT(config).eval()
        model.load_state_dict(base.state_dict())
        model.to(FLOAT_DTYPES[name])
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        for backend in backends:
            tps = decode_tokens_per_s(model, tokens=tokens, runs=runs, backend=backend)
            print(
                f"  {name:5s} {backend:9s} {tps:7.0f} tokens/s   weights {weight_bytes / 1e6:5.1f} MB   "
                f"{tps * weight_bytes / working_set:4.0%} of the working-set bandwidth "
                f"(bound {working_set / weight_bytes:5.0f} tokens/s)"
            )
