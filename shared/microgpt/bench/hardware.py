"""This machine's ceilings, measured: memory read bandwidth and matmul peak.

Decoding one token reads every weight once, so bandwidth bounds decode speed;
training is matmul-bound, so the bf16 matmul peak is the denominator of MFU.
Both take the best of a few repeats, which is what the hardware can do when the
noise of a shared machine lets it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def best_seconds(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> float:
    """Fastest wall time of `fn` over a few runs."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def memory_bandwidth(n_bytes: int = 1 << 30) -> float:
    """Read bandwidth in bytes/s of a reduction over `n_bytes` (default: far larger than the caches)."""
    x = torch.ones(n_bytes // 4, dtype=torch.float32)
    repeats = max(5, (1 << 30) // n_bytes)  # small buffers: more tries to find a quiet moment
    return n_bytes / best_seconds(lambda: x.sum(), repeats=repeats, warmup=2)


def matmul_peak(dtype: torch.dtype = torch.bfloat16, n: int = 2048, device: str = "cpu") -> float:
    """Dense matmul throughput in FLOP/s for square n x n operands."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)

    def run() -> None:
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return 2 * n**3 / best_seconds(run, repeats=5, warmup=2)
