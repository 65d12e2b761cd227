"""Training benchmarks: recipes that must reach a loss in a time, and throughput against the peak.

    microgpt bench train                          # all four
    microgpt bench train --only shakespeare-cpu   # nanoGPT's CPU recipe: val loss at 2,000 steps
    microgpt bench train --only chat-tiny         # a chat model from scratch, then its task accuracy

- `shakespeare-cpu`: the full 2,000-step recipe; prints the final validation loss and the
  wall time (nanoGPT's CPU recipe reaches 1.88 in about 100 s on a 2-core machine).
- `shakespeare` (10.7M, block 256): a few bf16-autocast training steps (dropout 0.2, as the
  preset); prints tokens/s and the MFU against the fp32 and bf16 matmul peaks measured by the
  same command, then the step's matrix products alone, timed at the model's own shapes: the
  ceiling of any step, and how much of the step is everything else.
- `names`: the preset's recipe (makemore's transformer on names-32k) on one DDP process
  per core; prints the validation loss of its best checkpoint and the wall time.
- `chat-tiny`: the preset's recipe from scratch, as `microgpt train --preset chat-tiny` runs it
  (pretraining on the built-in conversations, then the loss on the replies; generating and
  preparing the data count when the cache has none yet), then the accuracy of its greedy
  replies per task on the whole held-out test split (`microgpt.task_eval`), beside the targets.

The data sets come from the cache (`MICROGPT_CACHE`): seed it, or have network once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from microgpt.bench.hardware import best_seconds, matmul_peak
from microgpt.config import GPTConfig
from microgpt.evaluate import evaluate_checkpoint
from microgpt.model import GPT
from microgpt.train.loop import train
from microgpt.zoo import get_preset

RECIPES = ("shakespeare-cpu", "shakespeare", "names", "chat-tiny")
CHAT_TARGETS = {"add": 0.95, "names": 0.95, "reverse": 0.80}  # chat-tiny within CHAT_SECONDS on 2 cores
CHAT_SECONDS = 600.0
# The preset's 64-row batch as 4 accumulated micro-batches of 16: the same optimizer steps,
# with activations that stay in the CPU's caches (1.15x the tokens/s of 64 rows at once).
MICRO = {"batch_size": 16, "grad_accum": 4}
Shape = tuple[int, ...]


def shakespeare_cpu(cache_dir: Path, work: Path) -> None:
    result = train("shakespeare-cpu", out_dir=work / "shakespeare-cpu", cache_dir=cache_dir)
    print(
        f"shakespeare-cpu: val loss {result.val_loss:.4f} after {result.step} steps in "
        f"{result.wall_seconds:.1f} s ({result.tokens_per_second:,.0f} tokens/s; target <= 1.88)"
    )


def products_seconds(config: GPTConfig, rows: int) -> tuple[float, float]:
    """Seconds and FLOPs of one micro-batch's matrix products alone, forward and backward, in bf16.

    Each linear layer is three products (forward, input gradient, weight gradient), attention six
    batched ones per layer (scores, output; and their four gradients), all at the shapes a batch
    of `rows` sequences of the full context gives them.
    """
    M, T, C, hs = rows * config.block_size, config.block_size, config.n_embd, config.head_size
    q_width, kv_width = config.n_head * hs, config.kv_heads * hs
    up = config.hidden_size * (2 if config.mlp == "swiglu" else 1)
    linears = [(C, q_width + 2 * kv_width), (q_width, C), (C, up), (config.hidden_size, C)]

    def timed(a_shape: Shape, b_shape: Shape, transpose: bool = False) -> tuple[float, float]:
        # A weight gradient multiplies the output gradient's transpose, as autograd hands it over.
        a = torch.randn(a_shape[::-1]).t() if transpose else torch.randn(a_shape)
        a, b = a.to(torch.bfloat16), torch.randn(b_shape, dtype=torch.bfloat16)
        flops = 2 * a.numel() * b.shape[-1]
        return best_seconds(lambda: torch.matmul(a, b), repeats=5, warmup=2), flops

    def three(k: int, n: int) -> list[tuple[float, float]]:  # forward, input gradient, weight gradient
        return [timed((M, k), (k, n)), timed((M, n), (n, k)), timed((n, M), (M, k), transpose=True)]

    layer = [timing for k, n in linears for timing in three(k, n)]
    heads = rows * config.n_head
    layer += 3 * [timed((heads, T, hs), (heads, hs, T)), timed((heads, T, T), (heads, T, hs))]
    head = three(C, config.vocab_size)
    seconds = config.n_layer * sum(t for t, _ in layer) + sum(t for t, _ in head)
    flops = config.n_layer * sum(f for _, f in layer) + sum(f for _, f in head)
    return seconds, flops


def shakespeare_throughput(cache_dir: Path, work: Path, steps: int = 20) -> None:
    preset = get_preset("shakespeare")
    peaks = {name: matmul_peak(dtype) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    overrides = {"max_steps": steps, "eval_interval": steps, "eval_steps": 1, "precision": "bf16", **MICRO}
    result = train(preset, out_dir=work / "shakespeare", cache_dir=cache_dir, train_overrides=overrides)
    with torch.device("meta"):
        flops = GPT(preset.model.updated(vocab_size=65)).flops_per_token()
    achieved = flops * result.tokens_per_second
    print(
        f"shakespeare: {result.tokens_per_second:,.0f} training tokens/s (bf16 autocast, {steps} steps of "
        f"{MICRO['grad_accum']} x {MICRO['batch_size']} rows) "
        f"= {achieved / 1e12:.3f} TFLOP/s; MFU {achieved / peaks['fp32']:.0%} of the "
        f"fp32 peak ({peaks['fp32'] / 1e12:.2f}), {achieved / peaks['bf16']:.0%} of the bf16 peak "
        f"({peaks['bf16'] / 1e12:.2f} TFLOP/s)"
    )
    config = preset.model.updated(vocab_size=65)
    seconds, product_flops = products_seconds(config, MICRO["batch_size"])
    step = MICRO["grad_accum"] * MICRO["batch_size"] * config.block_size / result.tokens_per_second
    share = MICRO["grad_accum"] * seconds / step
    print(
        f"  its matrix products alone, at the model's shapes: {product_flops / seconds / 1e12:.2f} TFLOP/s "
        f"({product_flops / seconds / peaks['bf16']:.0%} of the bf16 peak), {share:.0%} of the step's time; "
        f"the rest is dropout, softmax, norms, GELU, casts and the optimizer"
    )


def names_within(cache_dir: Path, work: Path, target_seconds: float = 300.0) -> None:
    """The `names` preset as `microgpt train` runs it on this machine's cores: one process per
    core (torchrun, gloo DDP; the model is too small to share one step between threads).
    Wall time includes starting the processes; the loss is re-measured on the whole split."""
    ranks = max(1, min(2, os.cpu_count() or 1))
    out = work / "names"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    command += ["-m", "microgpt", "train", "--preset", "names", "--out", str(out)]
    started = time.perf_counter()
    env = {**os.environ, "MICROGPT_CACHE": str(cache_dir)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:  # the run's own one-line error (rank 0's), not torchrun's report
        errors = [line for line in done.stderr.splitlines() if line.startswith("microgpt ")]
        raise OSError(f"the names run exited with code {done.returncode}: {(errors or ['no error line'])[0]}")
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = max(r["step"] for r in records)
    result = evaluate_checkpoint(out / "best", "names-32k", cache_dir=cache_dir)
    print(
        f"names: val loss {result.loss:.4f} on the whole validation split ({steps} steps on {ranks} DDP "
        f"processes in {wall:.0f} s including start-up; target <= 1.92 within {target_seconds:.0f} s)"
    )


def chat_tiny(cache_dir: Path, work: Path) -> None:
    from microgpt.task_eval import evaluate_checkpoint_tasks, report

    load = os.getloadavg()[0]
    result = train("chat-tiny", out_dir=work / "chat-tiny", cache_dir=cache_dir)
    print(
        f"chat-tiny: {result.step} steps in {result.wall_seconds:.0f} s with data preparation "
        f"(target <= {CHAT_SECONDS:.0f} s; {torch.get_num_threads()} threads, load average {load:.2f} "
        f"at the start), val loss on the replies {result.val_loss:.4f}"
    )
    scores = evaluate_checkpoint_tasks(result.checkpoint, "all", cache_dir=cache_dir)
    print(report(scores))
    for task, target in CHAT_TARGETS.items():
        accuracy = scores[task].accuracy
        print(f"  {task}: {accuracy:.1%} (target >= {target:.0%}) {'ok' if accuracy >= target else 'MISSED'}")


def run(cache_dir: Path, only: list[str] | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="microgpt-bench-train-") as tmp:
        work = Path(tmp)
        chosen = only or list(RECIPES)
        if "shakespeare-cpu" in chosen:
            shakespeare_cpu(cache_dir, work)
        if "shakespeare" in chosen:
            shakespeare_throughput(cache_dir, work)
        if "names" in chosen:
            names_within(cache_dir, work)
        if "chat-tiny" in chosen:
            chat_tiny(cache_dir, work)
