"""The training loop: one function for every preset, from microgpt's one name per step to GPT-2.

    microgpt train --preset micro --out runs/micro           # the CLI (microgpt.train.cli) calls it
    result = train("micro", out_dir=Path("runs/micro"), cache_dir=get_settings().cache)
    result = train("micro", out_dir=Path("runs/micro"), cache_dir=..., resume=True)  # continue
    train("names", ..., data="new.txt", init_from=Path("runs/names/checkpoint"), lora=LoRAConfig(rank=8))
    torchrun --nproc_per_node 2 -m microgpt train --preset names   # DDP, same function

Design choices a reader must know:

- A run is a pure function of its configs and seed. Batch `step` comes from
  `Batches.get(step)` (seeded by (seed, split, step), nothing drawn before matters),
  the model is initialised under `torch.manual_seed(seed)`, and the checkpoint holds the
  optimizer state and every RNG state (python, numpy, torch, as JSON lists). So a run
  stopped at step k and resumed reproduces the uninterrupted run bit for bit on CPU:
  the same per-step losses and the same final weights.
- One step is `grad_accum` micro-batches of `batch_size` rows; its loss is the mean of
  their mean per-token losses (targets of -1, the padding of documents mode, are
  ignored). For `micro` that is microgpt's definition: one name per step, the mean loss
  over its positions.
- `out_dir` holds `checkpoint/` (the latest, replaced atomically, see
  `microgpt.checkpoint`), `best/` (the weights of the best evaluation so far, no
  optimizer state) and `metrics.jsonl` (one line per step and per evaluation).
- Early stopping (`early_stopping_patience` evaluations without a new best) checkpoints
  and returns like the stop flag; the count is in the checkpoint, so resume keeps it.
  A resumed run first drops metrics lines past the checkpoint's step, so the log reads
  as if the run had never stopped.
- Stopping is cooperative: `stop_flag` (an Event or a callable) is checked at step
  boundaries; when set, the loop checkpoints and returns. `stop_on_signals` turns
  SIGTERM/SIGINT into that flag for the CLI.
- Finetuning is this loop with `init_from` (a checkpoint: its weights, architecture and
  tokenizer) and optionally `lora` (a LoRAConfig, `microgpt.train.lora`): base weights
  frozen, the optimizer over the adapters only, each checkpoint the merged model and the
  adapters beside it. A LoRA run resumes from the base checkpoint plus those adapters.
- Under torchrun the same loop runs data-parallel (`microgpt.train.distributed`): each
  rank draws its rows of the global batch, each rank's loss is weighted by its share of
  the batch's tokens so the averaged gradient and the logged loss are the one-process
  ones, and only rank 0 writes. A 1-process run takes none of these branches.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from microgpt.atomic import atomic_write_bytes
from microgpt.checkpoint import (
    MODEL_FILE,
    Checkpoint,
    load_checkpoint,
    load_optimizer_state,
    read_config,
    save_checkpoint,
)
from microgpt.config import GPTConfig, TrainConfig
from microgpt.data.batches import IGNORE_INDEX, Batches, trim_padding
from microgpt.data.manifest import MANIFEST_FILE, TOKENIZER_FILE, check_vocab, read_manifest
from microgpt.data.prepare import prepare_dataset
from microgpt.model import GPT
from microgpt.tokenizers import Tokenizer, load_tokenizer
from microgpt.train.distributed import DistContext, all_sum, barrier, cleanup, init_distributed
from microgpt.train.lora import LoRAConfig, adapters_bytes, apply_lora, load_adapters, merge_lora
from microgpt.zoo import Preset, get_preset

CHECKPOINT_DIR = "checkpoint"
BEST_DIR = "best"
METRICS_FILE = "metrics.jsonl"
ADAPTERS_FILE = "adapters.safetensors"  # a LoRA run's adapters, beside its (merged) checkpoint
STATE_FORMAT = 1
# Settings that may change between a run and its resumption; any other change is refused.
RESUMABLE_CHANGES = {
    "max_steps",
    "eval_interval",
    "eval_steps",
    "early_stopping_patience",
    "early_stopping_min_delta",
    "compile",
}
# Model settings a finetune may change: the rest would no longer fit the base weights.
FINETUNE_MODEL_CHANGES = {"dropout"}
_BUILTIN_VOCAB_KINDS = ("char", "byte")  # kinds whose vocabulary size is fixed by the data
# Below this many FLOPs per full micro-batch a CPU step is too small to split over threads: a
# second thread gains nothing quiet (names: 15.3 vs 15.4 ms) and loses 7x on a busy machine.
SMALL_STEP_FLOPS = 2e9  # names: 1.3e9 (one thread), shakespeare-cpu: 4.0e9 (1.7x faster on two)


class TrainCallback:
    """Hooks the loop calls; override any of them. Records are the metrics.jsonl lines."""

    def on_step(self, record: dict[str, Any]) -> None: ...

    def on_eval(self, record: dict[str, Any]) -> None: ...

    def on_checkpoint(self, path: Path, step: int) -> None: ...


class _Flag(Protocol):
    def is_set(self) -> bool: ...


StopFlag = _Flag | Callable[[], bool]


@dataclass
class TrainResult:
    out_dir: Path
    checkpoint: Path
    step: int  # steps completed, counting those before a resume
    max_steps: int
    losses: list[float]  # one per completed step, from step 1
    val_loss: float | None  # the last evaluation's
    stopped: bool  # the stop flag ended the run before max_steps
    wall_seconds: float  # this call's, data preparation included
    tokens_per_second: float  # this call's steps, counting target tokens (not padding)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    adapters: Path | None = None  # a LoRA run's adapters file
    best: Path | None = None  # the best evaluation's weights (out_dir/best), once there was one
    best_step: int | None = None
    best_val_loss: float | None = None
    early_stopped: bool = False  # ended by early stopping (also sets `stopped`)


def default_device() -> str:
    """CUDA, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cpu_threads(p: Preset) -> int | None:
    """1 for a preset whose micro-batch is too small to share between threads, else None."""
    with torch.device("meta"):
        flops = GPT(p.model).flops_per_token() * p.train.batch_size * p.model.block_size
    return 1 if flops < SMALL_STEP_FLOPS else None


def lr_at(step: int, tc: TrainConfig) -> float:
    """The learning rate of update `step` (0-based): linear warmup, then decay to min_lr.

    With no warmup and a linear schedule to 0 this is microgpt's lr * (1 - step / steps).
    """
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    if tc.lr_schedule == "constant":
        return tc.lr
    progress = min(1.0, (step - tc.warmup_steps) / max(1, tc.max_steps - tc.warmup_steps))
    if tc.lr_schedule == "linear":
        return tc.min_lr + (tc.lr - tc.min_lr) * (1.0 - progress)
    return tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1.0 + math.cos(math.pi * progress))


def fused_kernels(params: list[torch.Tensor]) -> dict[str, bool]:
    """Adam's fused kernel (one pass over all parameters) on CPU and CUDA, else its foreach one;
    torch's default on the CPU is a Python loop of a dozen ops per parameter."""
    if all(p.device.type in ("cpu", "cuda") for p in params):
        return {"fused": True}
    return {"foreach": True}


def build_optimizer(model: nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    """Plain Adam (microgpt), or AdamW decaying only matrices that are not embeddings.

    Norm gains, biases (1-D) and embedding tables get no weight decay: decay would pull
    a gain toward 0 and a rare token's embedding toward nothing.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if tc.optimizer == "adam":
        return torch.optim.Adam(
            params,
            lr=tc.lr,
            betas=tc.betas,
            eps=tc.eps,
            weight_decay=tc.weight_decay,
            **fused_kernels(params),
        )
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay = [p for p in params if p.dim() >= 2 and id(p) not in embeddings]
    no_decay = [p for p in params if p.dim() < 2 or id(p) in embeddings]
    groups = [
        {"params": decay, "weight_decay": tc.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=tc.betas, eps=tc.eps, **fused_kernels(params))


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast for the forward pass (weights and optimizer stay fp32), or nothing."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Batches,
    steps: int,
    device: torch.device,
    *,
    ctx: DistContext | None = None,
    precision: str = "fp32",
) -> float:
    """Mean loss over val batches 0..steps-1: the same batches every time, so comparable.

    Under DDP each rank scores its rows and each batch's loss is the token-weighted mean
    over all ranks, the number one process scoring the whole batch would get.
    """
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(steps):
        x, y = trim_padding(*batches.get(i))
        with autocast(device, precision):
            loss = model(x.to(device), y.to(device)).loss
        if ctx is not None and ctx.active:
            n = (y != IGNORE_INDEX).sum().to(device=device, dtype=torch.float64)
            summed = all_sum(ctx, torch.stack([loss.double() * n, n]))
            total += (summed[0] / summed[1]).item()
        else:
            total += loss.item()
    model.train(was_training)
    return total / steps


def rng_state() -> dict[str, Any]:
    """Every RNG the loop may touch, as JSON-safe lists."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [
            np_state[0],
            np_state[1].tolist(),
            *(x.item() if hasattr(x, "item") else x for x in np_state[2:]),
        ],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def train(
    preset: str | Preset,
    *,
    out_dir: str | Path,
    cache_dir: str | Path,
    data: str | None = None,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    checkpoint_interval: int | None = None,
    resume: bool = False,
    callbacks: Sequence[TrainCallback] | None = None,
    stop_flag: StopFlag | None = None,
    device: str | torch.device | None = None,
    init_from: str | Path | None = None,
    lora: LoRAConfig | None = None,
    threads: int | None = None,
) -> TrainResult:
    """Train `preset` (a zoo name or a Preset) with overrides; checkpoints land in `out_dir`.

    `data` defaults to the preset's data set; it is prepared (or reused) under `cache_dir`
    with the preset's tokenizer and data mode. `checkpoint_interval` defaults to the
    eval interval. With `resume`, the run continues from `out_dir`'s checkpoint; without
    it, an existing checkpoint there is an error rather than silently replaced.

    `init_from` (a checkpoint) finetunes: the model is that checkpoint's (only
    `model_overrides` of dropout are allowed), and the data is prepared with its tokenizer;
    `data` may also be a prepared directory, which must have been made with that tokenizer.
    `lora` (which needs `init_from`) freezes the base and trains adapters only; each
    checkpoint is then the merged model, with the adapters beside it in
    `out_dir/adapters.safetensors`.

    `threads` sets torch's CPU threads for the run (restored after); by default a model whose
    micro-batch is under SMALL_STEP_FLOPS trains on one thread, others keep torch's setting.

    Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set) the model is wrapped in DDP, each rank
    reads its rows of every global batch, and only rank 0 writes files or calls callbacks.

    Each step appends `{"kind": "train", "step", "loss", "lr", "tokens_per_s"}` to
    `out_dir/metrics.jsonl` and passes it to every callback's `on_step`; evaluations append
    `{"kind": "eval", "step", "val_loss"}` (`on_eval`). `stop_flag` (a threading.Event or a
    callable) is checked between steps: when set, the loop checkpoints and returns with
    `stopped=True`. Errors a user can fix are ValueErrors.
    """
    started = time.perf_counter()
    p = preset if isinstance(preset, Preset) else get_preset(preset)
    base: Checkpoint | None = None
    if init_from is not None:
        refused = sorted(set(model_overrides or {}) - FINETUNE_MODEL_CHANGES)
        if refused:
            raise ValueError(
                f"finetuning keeps the checkpoint's architecture; cannot override model.{refused[0]}"
            )
        base = load_checkpoint(init_from)
        if base.tokenizer is None:
            raise ValueError(
                f"{init_from} has no tokenizer.json; finetuning needs the base model's tokenizer"
            )
        p = Preset(p.name, p.source, base.config, p.train)
    elif lora is not None:
        raise ValueError("LoRA adapts a trained model: pass init_from (the base checkpoint)")
    p = p.with_overrides(model=model_overrides, train=train_overrides)
    tc = p.train
    source = data or tc.dataset
    if source is None:
        raise ValueError(f"preset {p.name!r} names no data set; pass data (a built-in name or a path)")
    interval = checkpoint_interval if checkpoint_interval is not None else tc.eval_interval
    if interval < 1:
        raise ValueError(f"checkpoint_interval must be >= 1, got {interval}")
    out = Path(out_dir)
    ckpt_dir = out / CHECKPOINT_DIR
    has_checkpoint = (ckpt_dir / "config.json").is_file()
    if resume and not has_checkpoint:
        # A kill between the two renames of a checkpoint swap leaves the old one aside.
        aside = sorted(out.glob(f".{CHECKPOINT_DIR}.old-*")) if out.is_dir() else []
        hint = f" (an interrupted save left the previous one at {aside[0]}; rename it back)" if aside else ""
        raise ValueError(f"nothing to resume: {ckpt_dir} holds no checkpoint{hint}")
    if not resume and has_checkpoint:
        raise ValueError(f"{ckpt_dir} already holds a checkpoint; resume it, or choose another out_dir")
    dev = torch.device(device or default_device())
    ctx, dev = init_distributed(dev)
    before = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(threads or cpu_threads(p) or before)
    try:
        result = _train(
            p, ctx, dev, out, source, cache_dir, interval, resume, callbacks, stop_flag, base, lora
        )
        if ctx.active:
            gc.collect()  # frees the DDP wrapper (it holds reference cycles) while the group lives
        barrier(ctx)  # rank 0's last checkpoint is in place before any rank returns
    finally:
        torch.set_num_threads(before)
        cleanup(ctx)
    result.wall_seconds = time.perf_counter() - started
    return result


def _train(
    p: Preset,
    ctx: DistContext,
    dev: torch.device,
    out: Path,
    source: str,
    cache_dir: str | Path,
    interval: int,
    resume: bool,
    callbacks: Sequence[TrainCallback] | None,
    stop_flag: StopFlag | None,
    base: Checkpoint | None,
    lora: LoRAConfig | None,
) -> TrainResult:
    """The loop itself, on one rank; `train` has checked the arguments and joined the group."""
    tc = p.train
    ckpt_dir = out / CHECKPOINT_DIR
    base_tokenizer = base.tokenizer if base is not None else None
    if ctx.is_main:  # rank 0 prepares; the others then find the shards and reuse them
        prepared, tokenizer = _prepare(source, p, cache_dir, base_tokenizer)
    barrier(ctx)
    if not ctx.is_main:
        prepared, tokenizer = _prepare(source, p, cache_dir, base_tokenizer)
    data_sha256 = read_manifest(prepared).source_sha256
    mc = p.model if base is not None else p.model.updated(vocab_size=tokenizer.vocab_size)
    check_vocab(tokenizer, mc.vocab_size)
    shard = {"rank": ctx.rank, "world_size": ctx.world_size}
    sizes = {"batch_size": tc.batch_size, "block_size": mc.block_size, "seed": tc.seed, **shard}
    train_batches = Batches(prepared, tokenizer=tokenizer, **sizes)
    val_batches = Batches(prepared, split="val", **sizes)

    torch.manual_seed(tc.seed)  # the same on every rank: identical initial weights
    gpt = GPT(mc).to(dev)
    lineage: dict[str, Any] = {}
    if base is not None:
        gpt.load_state_dict(base.model.state_dict())
        lineage["init_from"] = str(base.path.resolve())
        lineage["base_sha256"] = read_config(base.path).files[MODEL_FILE]
    if lora is not None:
        apply_lora(gpt, lora)
        lineage["lora"] = lora.model_dump(mode="json")
    gpt.train()
    optimizer = build_optimizer(gpt, tc)
    losses: list[float] = []
    val_losses: list[tuple[int, float]] = []
    best: dict[str, Any] | None = None  # {"step", "val_loss"} of the best evaluation so far
    bad_evals = 0  # evaluations in a row without a new best, for early stopping
    step = 0
    metrics_path = out / METRICS_FILE
    adapters_path = out / ADAPTERS_FILE
    if resume:
        state = _restore(ckpt_dir, gpt, optimizer, mc, tc, (source, data_sha256), lineage, adapters_path)
        step, losses = state["step"], list(state["losses"])
        val_losses = [(int(s), float(v)) for s, v in state.get("val_losses", [])]
        best, bad_evals = state.get("best"), int(state.get("bad_evals", 0))
        if ctx.is_main:
            _truncate_metrics(metrics_path, step)
    elif ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("")
    fast: nn.Module = torch.compile(gpt) if tc.compile else gpt
    model = fast
    if ctx.active:
        model = DistributedDataParallel(fast, device_ids=[dev.index] if dev.type == "cuda" else None)
        if ctx.shared is not None:
            model.register_comm_hook(None, ctx.shared.ddp_hook)

    hooks = list(callbacks or []) if ctx.is_main else []
    tokens_this_call = 0
    stopped = early_stopped = False

    def servable() -> nn.Module:
        """The weights as served: a LoRA run's merged into a copy, training goes on unmerged."""
        return merge_lora(copy.deepcopy(gpt)) if lora is not None else gpt

    def save_best(val: float) -> None:
        if ctx.is_main:
            state = {"step": step, "val_loss": val, "data": source, "train": tc.model_dump(mode="json")}
            save_checkpoint(
                out / BEST_DIR,
                servable(),
                tokenizer=tokenizer,
                preset=p.name,
                trainer_state={**state, **lineage},
                metadata={"data": source, "step": step, "val_loss": val},
            )

    def checkpoint() -> None:
        if not ctx.is_main:
            return
        state = {
            "format": STATE_FORMAT,
            "step": step,
            "preset": p.name,
            "data": source,
            "data_sha256": data_sha256,
            "model": mc.model_dump(mode="json"),
            "train": tc.model_dump(mode="json"),
            "losses": losses,
            "val_losses": val_losses,
            "best": best,
            "bad_evals": bad_evals,
            "rng": rng_state(),
            **lineage,
        }
        if lora is not None:
            # Adapters first, then the checkpoint that records their digest: a crash between
            # the two leaves a pair that resume recognises as torn instead of mixing them.
            blob = adapters_bytes(gpt, lora)
            state["adapters_sha256"] = hashlib.sha256(blob).hexdigest()
            atomic_write_bytes(adapters_path, blob)
        save_checkpoint(
            ckpt_dir,
            servable(),
            tokenizer=tokenizer,
            preset=p.name,
            optimizer=optimizer,
            trainer_state=state,
            metadata={"data": source, "step": step},
        )
        for hook in hooks:
            hook.on_checkpoint(ckpt_dir, step)

    loop_started = time.perf_counter()
    with open(metrics_path, "a") if ctx.is_main else contextlib.nullcontext() as log:

        def emit(record: dict[str, Any]) -> None:
            if log is not None:
                log.write(json.dumps(record) + "\n")
                log.flush()

        saved = True  # nothing to checkpoint before the first step
        while step < tc.max_steps:
            t0 = time.perf_counter()
            first = step * tc.grad_accum
            batches = [trim_padding(*train_batches.get(first + m)) for m in range(tc.grad_accum)]
            # One collective before the step: whether any rank must stop, and each micro-batch's
            # token count over all ranks. Each rank's mean is weighed by its share of those tokens,
            # so DDP's average of gradients is the gradient of the whole batch's mean loss.
            own = [int((y != IGNORE_INDEX).sum()) for _, y in batches]
            local = [int(_is_set(stop_flag)), *own]
            stop, *counts = all_sum(ctx, torch.tensor(local, device=dev)).tolist() if ctx.active else local
            if stop:
                if not saved:
                    checkpoint()
                stopped = True
                break
            lr = lr_at(step, tc)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            total = torch.zeros((), device=dev)
            for micro, ((x, y), n, n_all) in enumerate(zip(batches, own, counts, strict=True)):
                last = micro == tc.grad_accum - 1
                with model.no_sync() if ctx.active and not last else contextlib.nullcontext():
                    with autocast(dev, tc.precision):
                        loss = model(x.to(dev), y.to(dev)).loss
                    if ctx.active:
                        share = n / n_all
                        (loss * (share * ctx.world_size / tc.grad_accum)).backward()
                        total += loss.detach() * share
                    else:
                        (loss / tc.grad_accum).backward()
                        total += loss.detach()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(gpt.parameters(), tc.grad_clip)
            optimizer.step()
            step += 1
            loss_value = (all_sum(ctx, total) / tc.grad_accum).item()
            tokens = sum(counts)
            dt = time.perf_counter() - t0
            losses.append(loss_value)
            tokens_this_call += tokens
            record = {
                "kind": "train",
                "step": step,
                "loss": loss_value,
                "lr": lr,
                "tokens_per_s": tokens / dt if dt > 0 else 0.0,
            }
            emit(record)
            for hook in hooks:
                hook.on_step(record)
            if step % tc.eval_interval == 0 or step == tc.max_steps:
                val = evaluate(fast, val_batches, tc.eval_steps, dev, ctx=ctx, precision=tc.precision)
                val_losses.append((step, val))
                improved = best is None or val < best["val_loss"] - tc.early_stopping_min_delta
                if best is None or val < best["val_loss"]:
                    best = {"step": step, "val_loss": val}
                    save_best(val)
                bad_evals = 0 if improved else bad_evals + 1
                early_stopped = 0 < tc.early_stopping_patience <= bad_evals
                record = {"kind": "eval", "step": step, "val_loss": val, "best_val_loss": best["val_loss"]}
                emit(record)
                for hook in hooks:
                    hook.on_eval(record)
            saved = step % interval == 0 or step == tc.max_steps
            if saved:
                checkpoint()
            if early_stopped and step < tc.max_steps:
                if not saved:
                    checkpoint()
                stopped = True
                break

    looped = time.perf_counter() - loop_started
    return TrainResult(
        out_dir=out,
        checkpoint=ckpt_dir,
        step=step,
        max_steps=tc.max_steps,
        losses=losses,
        val_loss=val_losses[-1][1] if val_losses else None,
        stopped=stopped,
        wall_seconds=0.0,  # set by train, which counts data preparation too
        tokens_per_second=tokens_this_call / looped if looped > 0 else 0.0,
        val_losses=val_losses,
        adapters=adapters_path if lora is not None else None,
        best=out / BEST_DIR if best is not None else None,
        best_step=best["step"] if best is not None else None,
        best_val_loss=best["val_loss"] if best is not None else None,
        early_stopped=early_stopped and stopped,
    )


def _is_set(flag: StopFlag | None) -> bool:
    if flag is None:
        return False
    if hasattr(flag, "is_set"):
        return bool(flag.is_set())
    return bool(flag())


def _prepare(
    source: str, p: Preset, cache_dir: str | Path, tokenizer: Tokenizer | None = None
) -> tuple[Path, Tokenizer]:
    """The prepared directory and its tokenizer, with the preset's tokenizer and data mode.

    A given `tokenizer` (the base model's, when finetuning) replaces the preset's, and
    `source` may then be a prepared directory, which must have been made with it.
    """
    tc = p.train
    if tokenizer is not None:
        if (Path(source) / MANIFEST_FILE).is_file():
            prepared = Path(source)
            manifest = read_manifest(prepared)
            if manifest.tokenizer_hash != tokenizer.content_hash:
                raise ValueError(
                    f"{source} was prepared with another tokenizer ({manifest.tokenizer_kind}, hash "
                    f"{manifest.tokenizer_hash[:12]}) than the base checkpoint's ({tokenizer.kind}, hash "
                    f"{tokenizer.content_hash[:12]}); finetuning keeps the base model's tokenizer, so "
                    f"prepare the data with the checkpoint's tokenizer.json, or pass the raw data"
                )
            return prepared, tokenizer
        prepared, _ = prepare_dataset(source, cache_dir=cache_dir, tokenizer=tokenizer, mode=tc.data_mode)
        return prepared, tokenizer
    spec = tc.tokenizer
    trained_kind = (
        spec not in _BUILTIN_VOCAB_KINDS and not spec.endswith(".json") and not Path(spec).is_file()
    )
    prepared, _ = prepare_dataset(
        source,
        cache_dir=cache_dir,
        tokenizer=spec,
        vocab_size=p.model.vocab_size if trained_kind else None,
        mode=tc.data_mode,
    )
    return prepared, load_tokenizer(prepared / TOKENIZER_FILE)


def _restore(
    ckpt_dir: Path,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    mc: GPTConfig,
    tc: TrainConfig,
    data: tuple[str, str],
    lineage: dict[str, Any],
    adapters_path: Path,
) -> dict[str, Any]:
    """Load weights, optimizer and RNG states from `ckpt_dir`; refuse a different recipe.

    Data and base weights are compared by content (sha256), not by path, so a run moves
    between machines whose caches live elsewhere (the trainer service's workers).
    `data` is (source, sha256 of its content). `lineage` is the base checkpoint and LoRA
    config this run was started with; a LoRA run
    takes its frozen weights from the base (checked by digest) and its adapters from
    `adapters_path` (checked against the digest the checkpoint recorded).
    """
    saved_model = read_config(ckpt_dir).model
    if saved_model != mc:
        raise ValueError(
            f"cannot resume {ckpt_dir}: {_diff(saved_model.model_dump(), mc.model_dump(), 'model')}"
        )
    ckpt = load_checkpoint(ckpt_dir, device=next(model.parameters()).device)
    state = ckpt.trainer_state
    if state is None or state.get("format") != STATE_FORMAT:
        raise ValueError(f"cannot resume {ckpt_dir}: it holds no trainer state of format {STATE_FORMAT}")
    saved_train = TrainConfig.model_validate(state["train"]).model_dump()
    now = tc.model_dump()
    changed = {k for k in now if saved_train[k] != now[k]} - RESUMABLE_CHANGES
    if changed:
        diff = _diff({k: saved_train[k] for k in changed}, {k: now[k] for k in changed}, "train")
        raise ValueError(f"cannot resume {ckpt_dir}: {diff}")
    source, data_sha256 = data
    if state.get("data_sha256") != data_sha256:
        raise ValueError(
            f"cannot resume {ckpt_dir}: it trained on {state['data']!r}, other content than {source!r}"
        )
    for key in ("lora", "base_sha256"):
        if state.get(key) != lineage.get(key):
            raise ValueError(
                f"cannot resume {ckpt_dir}: its {key} was {state.get(key)!r}, now {lineage.get(key)!r}"
            )
    if state["step"] > tc.max_steps:
        raise ValueError(
            f"cannot resume {ckpt_dir}: it is at step {state['step']}, past max_steps {tc.max_steps}"
        )
    if "lora" in lineage:
        blob = adapters_path.read_bytes() if adapters_path.is_file() else b""
        if hashlib.sha256(blob).hexdigest() != state.get("adapters_sha256"):
            raise ValueError(
                f"cannot resume {ckpt_dir}: {adapters_path} is missing or is not the one its checkpoint "
                f"recorded (a save was interrupted between the two); restart the finetune"
            )
        load_adapters(adapters_path, model)
    else:
        model.load_state_dict(ckpt.model.state_dict())
    load_optimizer_state(ckpt_dir, optimizer)
    set_rng_state(state["rng"])
    return state


def _diff(saved: dict[str, Any], now: dict[str, Any], section: str) -> str:
    parts = [
        f"{section}.{k} was {saved[k]!r}, now {now[k]!r}" for k in sorted(saved) if saved[k] != now.get(k)
    ]
    return "the settings differ from the checkpoint's (" + "; ".join(parts) + ")"


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the log lines up to `step`: those after it are redone by the resumed run."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a kill mid-write
    path.write_text("".join(line + "\n" for line in kept))
