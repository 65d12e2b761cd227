"""Continuous batching throughput: one stream vs N concurrent streams through `BatchEngine`.

    microgpt bench engine                                  # shakespeare, int8 / bf16 / fp32, 32 streams
    microgpt bench engine --precision int8 --streams 8 --tokens 64

Random weights (speed does not depend on what they say), greedy decoding with no stop
token, so every request generates exactly `--tokens` tokens. Single stream: one request
alone, tokens/s from submit to its last token. Concurrent: `--streams` requests submitted
at once; aggregate tokens/s over the wall time until the last finishes, and time to first
token (TTFT) p50/p99 over the requests. No HTTP: this is the engine's ceiling.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

from microgpt.model import GPT
from microgpt.native import kernels
from microgpt.precision import MODES, Precision
from microgpt.quantize import FLOAT_DTYPES, quantize_model
from microgpt.sampling import SamplingParams
from microgpt.serving.engine import BatchEngine, RequestHandle
from microgpt.zoo import get_preset


def _drain(handles: list[RequestHandle]) -> int:
    return sum(sum(1 for e in h if e.token_id is not None) for h in handles)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(*, preset: str, precision: list[Precision], streams: int, tokens: int, threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = get_preset(preset, model={"dropout": 0.0}).model
    tokens = min(tokens, config.block_size - 1)
    base = GPT(config).eval()
    params = SamplingParams(temperature=0.0, max_new_tokens=tokens)
    print(f"model: {preset}, {base.num_params() / 1e6:.2f}M parameters; {torch.get_num_threads()} threads; "
          f"{tokens} tokens per request, greedy; native kernels: {kernels()}")  # fmt: skip
    for name in precision:
        model = quantize_model(base, name) if name in MODES else copy.deepcopy(base).to(FLOAT_DTYPES[name])
        engine = BatchEngine(model, max_batch=streams, max_queue=streams)
        engine.start()
        try:
            _drain([engine.submit([0], params)])  # warm-up (and the native build)
            start = time.perf_counter()
            single = _drain([engine.submit([1], params)]) / (time.perf_counter() - start)
            start = time.perf_counter()
            handles = [engine.submit([i % config.vocab_size], params) for i in range(streams)]
            total = _drain(handles)
            aggregate = total / (time.perf_counter() - start)
            ttft = [h.time_to_first_token or 0.0 for h in handles]
        finally:
            engine.stop()
        print(
            f"  {name:5s} {engine.backend:7s} single {single:7.0f} tokens/s | {streams} streams "
            f"{aggregate:7.0f} tokens/s ({aggregate / single:4.1f}x) | TTFT p50 "
            f"{statistics.median(ttft) * 1e3:6.1f} ms p99 {_percentile(ttft, 0.99) * 1e3:6.1f} ms"
        )
