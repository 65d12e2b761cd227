"""Load test of the inference service on loopback: single-stream and concurrent tokens/s, time to first token.

    microgpt bench serve --preset shakespeare --precision int8            # random weights, fresh service
    microgpt bench serve --checkpoint runs/shakespeare/best --precision fp32
    microgpt bench serve --model shakespeare@production --precision bf16  # MICROGPT_REGISTRY_URL

The service runs as a subprocess (uvicorn with `services.inference.app:create_app`) on a free
loopback port, serving one model; every figure is measured by a client through the streaming
OpenAI API (`POST /v1/completions`, `stream: true`), so HTTP, JSON and SSE are all included.
Generation is greedy from a one-character prompt and runs to `--tokens` (EOS can end a
trained model's answer sooner; the usage chunk counts what was generated). Reported:

- single stream: generated tokens/s of one request at a time (median of `--runs`);
- `--concurrency` streams: aggregate generated tokens/s over `--requests` requests kept
  `--concurrency` in flight, and p50/p99 time to first token (first text chunk).

Both phases stop at `--time-limit` seconds. Random weights (a preset) are fine for speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from microgpt.precision import PRECISIONS
from microgpt.processes import free_port

SERVED_ID = "bench"
START_TIMEOUT_S = 600.0  # loading includes quantization and, for compiled backends, compilation


@dataclass
class StreamResult:
    tokens: int
    ttft: float
    seconds: float


def random_checkpoint(preset: str, out: Path) -> Path:
    """A checkpoint of `preset` with random weights and a char tokenizer of the preset's vocabulary size."""
    import torch

    from microgpt.checkpoint import save_checkpoint
    from microgpt.model import GPT
    from microgpt.tokenizers import CharTokenizer
    from microgpt.zoo import get_preset

    config = get_preset(preset, model={"dropout": 0.0}).model
    printable = [chr(c) for c in range(32, 0x3000) if chr(c).isprintable()]
    chars = ["\n", *printable][: config.vocab_size - 1]  # + BOS
    if len(chars) + 1 != config.vocab_size:
        raise ValueError(
            f"preset {preset!r} has a vocabulary of {config.vocab_size}; use --checkpoint instead"
        )
    torch.manual_seed(0)
    save_checkpoint(out, GPT(config).eval(), tokenizer=CharTokenizer(chars), preset=preset)
    return out


def start_service(
    model_entry: str, port: int, home: Path, backend: str, max_batch: int
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MICROGPT_HOME": str(home),
        "MICROGPT_INFERENCE_MODELS": model_entry,
        "MICROGPT_INFERENCE_POLL_SECONDS": "0",
        "MICROGPT_INFERENCE_BACKEND": backend,
        "MICROGPT_INFERENCE_MAX_BATCH": str(max_batch),
    }
    env.pop("MICROGPT_API_KEY", None)
    command = [sys.executable, "-m", "uvicorn", "services.inference.app:create_app", "--factory"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    return subprocess.Popen(command, env=env)


def wait_ready(base: str, process: subprocess.Popen[bytes], timeout: float) -> str:
    """The served model id, once /readyz says a model is loaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise OSError(f"the inference service exited with code {process.returncode} before it was ready")
        try:
            response = httpx.get(f"{base}/readyz", timeout=5)
            if response.status_code == 200:
                return response.json()["models"][0]
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise OSError(f"the inference service was not ready after {timeout:.0f} s")


async def one_stream(client: httpx.AsyncClient, model: str, prompt: str, tokens: int) -> StreamResult:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft, generated = None, 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise OSError(f"HTTP {response.status_code}: {(await response.aread()).decode()[:200]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            # The client shares the CPU with the service: after the first text it parses only the
            # usage chunk (the server's count of generated tokens), not every text chunk.
            if ttft is not None and '"usage":null' in line:
                continue
            chunk = json.loads(line[6:])
            if ttft is None and chunk["choices"] and chunk["choices"][0]["text"]:
                ttft = time.perf_counter() - start
            if chunk.get("usage"):
                generated = chunk["usage"]["completion_tokens"]
    seconds = time.perf_counter() - start
    return StreamResult(generated, seconds if ttft is None else ttft, seconds)


async def single_stream(
    base: str, model: str, prompt: str, tokens: int, runs: int, deadline: float
) -> list[float]:
    rates = []
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        await one_stream(client, model, prompt, min(tokens, 8))  # connection and first-request costs
        for _ in range(runs):
            if time.monotonic() > deadline:
                break
            r = await one_stream(client, model, prompt, tokens)
            rates.append(r.tokens / r.seconds)
    return rates


async def concurrent_streams(
    base: str, model: str, prompt: str, tokens: int, concurrency: int, requests: int, deadline: float
) -> tuple[list[StreamResult], float]:
    results: list[StreamResult] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:
        todo = iter(range(requests))

        async def worker() -> None:
            for _ in todo:
                if time.monotonic() > deadline:
                    return
                results.append(await one_stream(client, model, prompt, tokens))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return results, wall


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def run(
    *,
    checkpoint: str | None,
    model: str | None,
    preset: str,
    precision: str,
    tokens: int,
    runs: int,
    concurrency: int,
    requests: int,
    time_limit: float,
    backend: str,
    prompt: str,
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="microgpt-bench-serve-") as tmp:
        home = Path(tmp)
        if model is not None:
            entry, source = f"{model}:{precision}", model
        else:
            directory = Path(checkpoint) if checkpoint else random_checkpoint(preset, home / "checkpoint")
            entry, source = f"{SERVED_ID}={directory.resolve()}:{precision}", str(checkpoint or preset)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        process = start_service(entry, port, home, backend, max(concurrency, 1))
        try:
            served = wait_ready(base, process, START_TIMEOUT_S)
            print(f"serving {source} as {served} ({precision}, backend {backend}) at {base}")
            deadline = time.monotonic() + time_limit
            rates = asyncio.run(single_stream(base, served, prompt, tokens, runs, deadline))
            single = statistics.median(rates) if rates else 0.0
            print(f"single stream: {single:,.0f} generated tokens/s (median of {len(rates)}, {tokens} max)")
            deadline = time.monotonic() + time_limit
            results, wall = asyncio.run(
                concurrent_streams(base, served, prompt, tokens, concurrency, requests, deadline)
            )
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    aggregate = sum(r.tokens for r in results) / wall if results else 0.0
    ttfts = [r.ttft for r in results] or [0.0]
    p50, p99 = percentile(ttfts, 50), percentile(ttfts, 99)
    print(
        f"{concurrency} concurrent streams: {aggregate:,.0f} generated tokens/s aggregate "
        f"({aggregate / single if single else 0:.1f}x single) over {len(results)} requests in {wall:.1f}s; "
        f"time to first token p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
    )
    return {
        "single_tokens_per_s": single,
        "aggregate_tokens_per_s": aggregate,
        "ttft_p50_s": p50,
        "ttft_p99_s": p99,
    }


def cmd_bench_serve(args: argparse.Namespace) -> None:
    if args.checkpoint and args.model:
        raise ValueError("give --checkpoint or --model, not both")
    if args.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {args.precision!r}; choose from {', '.join(PRECISIONS)}")
    for name in ("tokens", "runs", "concurrency", "requests"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1")
    run(
        checkpoint=args.checkpoint,
        model=args.model,
        preset=args.preset,
        precision=args.precision,
        tokens=args.tokens,
        runs=args.runs,
        concurrency=args.concurrency,
        requests=args.requests,
        time_limit=args.time_limit,
        backend=args.backend,
        prompt=args.prompt,
    )


def register_bench(bench: argparse._SubParsersAction) -> None:
    """Add `bench serve` to the `bench` subcommands."""
    p = bench.add_parser("serve", help="inference service load test: tokens/s and time to first token")
    p.add_argument("--checkpoint", help="checkpoint directory to serve (default: random weights of --preset)")
    p.add_argument("--model", help="registry reference to serve instead, e.g. shakespeare@production")
    p.add_argument("--preset", default="shakespeare", help="preset of the random-weight model")
    p.add_argument("--precision", default="fp32", help=", ".join(PRECISIONS))
    p.add_argument("--tokens", type=int, default=256, help="max_tokens of each request")
    p.add_argument("--runs", type=int, default=5, help="single-stream requests")
    p.add_argument("--concurrency", type=int, default=32, help="streams in flight together")
    p.add_argument("--requests", type=int, default=64, help="requests of the concurrent phase")
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds per phase at most")
    p.add_argument("--backend", default="auto", help="engine decode step: auto, eager, compiled, native")
    p.add_argument("--prompt", default="\n", help="prompt text of every request")
    p.set_defaults(run=cmd_bench_serve)
