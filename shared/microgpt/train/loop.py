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
  optimizer state and the run state (`microgpt.train.state.RunState`: step, best
  evaluation, every RNG state as JSON lists). So a run
  stopped at step k and resumed reproduces the uninterrupted run bit for bit on CPU:
  the same per-step losses and the same final weights.
- One step is `grad_accum` micro-batches of `batch_size` rows; its loss is the mean of
  their mean per-token losses (targets of -1, the padding of documents mode, are
  ignored). For `micro` that is microgpt's definition: one name per step, the mean loss
  over its positions.
- `out_dir` holds `checkpoint/` (the latest, replaced atomically, see
  `microgpt.checkpoint`), `best/` (the weights of the best evaluation so far, no
  optimizer state) and `metrics.jsonl` (one line per step, evaluation and probe: the run's
  only loss history, `microgpt.train.metrics`).
- Early stopping (`early_stopping_patience` evaluations without a new best) checkpoints
  and returns like the stop flag; the count is in the checkpoint, so resume keeps it.
  A resumed run first drops metrics lines past the checkpoint's step, so the log reads
  as if the run had never stopped.
- Stopping is cooperative: `stop_flag` (an Event or a callable) is checked at step
  boundaries; when set, the loop checkpoints and returns. `stop_on_signals` turns
  SIGTERM/SIGINT into that flag for the CLI.
- Supervised finetuning is this loop with `train.loss_on="assistant"` on conversations
  (messages JSONL, rendered with the chat template): the data is prepared with a loss mask
  and the loss falls on the assistant's replies only. With `train.pretrain_fraction` the
  first part of the steps trains on every token of the same shards (pretraining, then
  finetuning, in one resumable run: the step says which); evaluation always uses the mask.
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
import functools
import gc
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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
from microgpt.interpret.heads import probe
from microgpt.model import GPT
from microgpt.tokenizers import Tokenizer, load_tokenizer
from microgpt.train.distributed import DistContext, all_sum, barrier, cleanup, init_distributed
from microgpt.train.lora import LoRAConfig, adapters_bytes, apply_lora, load_adapters, merge_lora
from microgpt.train.metrics import METRICS_FILE, MetricsLog, TrainCallback, read_history
from microgpt.train.metrics import truncate as truncate_metrics
from microgpt.train.state import RunState, diff_settings, rng_state, set_rng_state
from microgpt.zoo import Preset, get_preset

CHECKPOINT_DIR = "checkpoint"
BEST_DIR = "best"
ADAPTERS_FILE = "adapters.safetensors"  # a LoRA run's adapters, beside its (merged) checkpoint
# Model settings a finetune may change: the rest would no longer fit the base weights.
FINETUNE_MODEL_CHANGES = {"dropout"}
_BUILTIN_VOCAB_KINDS = ("char", "byte")  # kinds whose vocabulary size is fixed by the data
# Below this many FLOPs per full micro-batch a CPU step is too small to split over threads: a
# second thread gains nothing quiet (names: 15.3 vs 15.4 ms) and loses 7x on a busy machine.
SMALL_STEP_FLOPS = 2e9  # names: 1.3e9 (one thread), shakespeare-cpu: 4.0e9 (1.7x faster on two)


class _Flag(Protocol):
    def is_set(self) -> bool: ...


StopFlag = _Flag | Callable[[], bool]


@dataclass
class TrainResult:
    out_dir: Path
    checkpoint: Path
    step: int  # steps completed, counting those before a resume
    max_steps: int
    losses: list[float]  # one per completed step, from step 1 (read from metrics.jsonl)
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


def fused_kernels(params: Sequence[torch.Tensor]) -> dict[str, bool]:
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
    `{"kind": "eval", "step", "val_loss"}` (`on_eval`); with `train.interpret_every` N, every
    N steps rank 0 appends `{"kind": "interpret", "step", "induction_score",
    "attention_entropy"}` (`microgpt.interpret.probe`, `on_interpret`). The result's loss
    history is read back from metrics.jsonl, the one place it is kept. `stop_flag` (a threading.Event or a
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
        state, ending = _train(
            p,
            ctx,
            dev,
            out=out,
            source=source,
            cache_dir=cache_dir,
            interval=interval,
            resume=resume,
            callbacks=callbacks,
            stop_flag=stop_flag,
            base=base,
            lora=lora,
        )
        if ctx.active:
            gc.collect()  # frees the DDP wrapper (it holds reference cycles) while the group lives
        barrier(ctx)  # rank 0's last checkpoint and metrics line are in place before any rank reads
    finally:
        torch.set_num_threads(before)
        cleanup(ctx)
    history = read_history(out / METRICS_FILE)
    return TrainResult(
        out_dir=out,
        checkpoint=ckpt_dir,
        step=state.step,
        max_steps=tc.max_steps,
        losses=history.losses,
        val_loss=history.val_losses[-1][1] if history.val_losses else None,
        stopped=ending.stopped,
        wall_seconds=time.perf_counter() - started,
        tokens_per_second=ending.tokens / ending.seconds if ending.seconds > 0 else 0.0,
        val_losses=history.val_losses,
        adapters=out / ADAPTERS_FILE if lora is not None else None,
        best=out / BEST_DIR if state.best_step is not None else None,
        best_step=state.best_step,
        best_val_loss=state.best_val_loss,
        early_stopped=ending.early_stopped,
    )


@dataclass
class _Run:
    """What one rank's loop works with, fixed once the run has started (the state is apart)."""

    preset: Preset
    ctx: DistContext
    dev: torch.device
    out: Path
    interval: int  # checkpoint every this many steps
    tokenizer: Tokenizer
    gpt: GPT  # the weights (with adapters in a LoRA run)
    fast: nn.Module  # gpt, compiled when train.compile: what evaluates
    model: nn.Module  # fast, wrapped in DDP under torchrun: what trains
    ddp: DistributedDataParallel | None
    optimizer: torch.optim.Optimizer
    train_batches: Batches
    pretrain_batches: Batches | None  # every token a target, for the first train.pretrain_steps
    val_batches: Batches
    lora: LoRAConfig | None
    stop_flag: StopFlag | None

    @property
    def tc(self) -> TrainConfig:
        return self.preset.train

    @property
    def ckpt_dir(self) -> Path:
        return self.out / CHECKPOINT_DIR


@dataclass
class _Ending:
    """How this call's loop ended, and its own throughput figures."""

    stopped: bool = False  # the stop flag or early stopping ended it before max_steps
    early_stopped: bool = False
    tokens: int = 0  # target tokens this call trained on
    seconds: float = 0.0  # this call's time in the loop


def _train(
    p: Preset,
    ctx: DistContext,
    dev: torch.device,
    *,
    out: Path,
    source: str,
    cache_dir: str | Path,
    interval: int,
    resume: bool,
    callbacks: Sequence[TrainCallback] | None,
    stop_flag: StopFlag | None,
    base: Checkpoint | None,
    lora: LoRAConfig | None,
) -> tuple[RunState, _Ending]:
    """The loop itself, on one rank; `train` has checked the arguments and joined the group."""
    tokenizer, prepared = _prepare_on_ranks(ctx, source, p, cache_dir, base)
    tc = p.train
    mc = p.model if base is not None else p.model.updated(vocab_size=tokenizer.vocab_size)
    check_vocab(tokenizer, mc.vocab_size)
    batches_of = functools.partial(
        Batches,
        prepared,
        batch_size=tc.batch_size,
        block_size=mc.block_size,
        seed=tc.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    gpt = _build_model(mc, tc.seed, dev, base, lora)
    optimizer = build_optimizer(gpt, tc)
    state = RunState(
        preset=p.name,
        data=source,
        data_sha256=read_manifest(prepared).source_sha256,
        model=mc,
        train=tc,
        lineage=_lineage(base, lora),
    )
    metrics_path = out / METRICS_FILE
    if resume:
        state = _restore(out, gpt, optimizer, state)
        if ctx.is_main:
            truncate_metrics(metrics_path, state.step)
    elif ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("")
    fast = torch.compile(gpt) if tc.compile else gpt
    assert isinstance(fast, nn.Module)  # torch.compile's signature says only "a callable"
    model: nn.Module = fast
    ddp: DistributedDataParallel | None = None
    if ctx.active:
        model = ddp = DistributedDataParallel(fast, device_ids=[dev.index] if dev.type == "cuda" else None)
        if ctx.shared is not None:
            ddp.register_comm_hook(None, ctx.shared.ddp_hook)
    run = _Run(
        preset=p,
        ctx=ctx,
        dev=dev,
        out=out,
        interval=interval,
        tokenizer=tokenizer,
        gpt=gpt,
        fast=fast,
        model=model,
        ddp=ddp,
        optimizer=optimizer,
        train_batches=batches_of(tokenizer=tokenizer, loss_on=tc.loss_on),
        pretrain_batches=batches_of(loss_on="all") if tc.pretrain_steps else None,
        val_batches=batches_of(split="val", loss_on=tc.loss_on),
        lora=lora,
        stop_flag=stop_flag,
    )
    hooks = list(callbacks or []) if ctx.is_main else []
    with MetricsLog(metrics_path if ctx.is_main else None, hooks) as log:
        ending = _loop(run, state, log)
    return state, ending


def _prepare_on_ranks(
    ctx: DistContext, source: str, p: Preset, cache_dir: str | Path, base: Checkpoint | None
) -> tuple[Tokenizer, Path]:
    """The run's tokenizer and prepared data: rank 0 prepares, the others then reuse its shards."""
    base_tokenizer = base.tokenizer if base is not None else None
    if ctx.is_main:
        prepared, tokenizer = _prepare(source, p, cache_dir, base_tokenizer)
    barrier(ctx)
    if not ctx.is_main:
        prepared, tokenizer = _prepare(source, p, cache_dir, base_tokenizer)
    return tokenizer, prepared


def _build_model(
    mc: GPTConfig, seed: int, dev: torch.device, base: Checkpoint | None, lora: LoRAConfig | None
) -> GPT:
    """The initial weights: seeded (the same on every rank), or the base's, with LoRA adapters."""
    torch.manual_seed(seed)
    gpt = GPT(mc).to(dev)
    if base is not None:
        gpt.load_state_dict(base.model.state_dict())
    if lora is not None:
        apply_lora(gpt, lora)
    gpt.train()
    return gpt


def _lineage(base: Checkpoint | None, lora: LoRAConfig | None) -> dict[str, Any]:
    """What a finetune records of where it came from (RunState.lineage)."""
    lineage: dict[str, Any] = {}
    if base is not None:
        lineage["init_from"] = str(base.path.resolve())
        lineage["base_sha256"] = read_config(base.path).files[MODEL_FILE]
    if lora is not None:
        lineage["lora"] = lora.model_dump(mode="json")
    return lineage


def _loop(run: _Run, state: RunState, log: MetricsLog) -> _Ending:
    """Steps from `state.step` to max_steps, evaluating, probing and checkpointing on schedule."""
    tc = run.tc
    ending = _Ending()
    started = time.perf_counter()
    saved = True  # nothing to checkpoint before the first step
    while state.step < tc.max_steps:
        t0 = time.perf_counter()
        batches, own, counts, stop = _next_batches(run, state.step)
        if stop:
            if not saved:
                _checkpoint(run, state, log)
            ending.stopped = True
            break
        lr = lr_at(state.step, tc)
        loss = _optimizer_step(run, batches, own, counts, lr)
        state.step += 1
        tokens = sum(counts)
        state.tokens += tokens
        ending.tokens += tokens
        dt = time.perf_counter() - t0
        tokens_per_s = tokens / dt if dt > 0 else 0.0
        log.step({"kind": "train", "step": state.step, "loss": loss, "lr": lr, "tokens_per_s": tokens_per_s})
        early = False
        if state.step % tc.eval_interval == 0 or state.step == tc.max_steps:
            log.eval(_evaluate(run, state))
            early = state.patience_exhausted
        if tc.interpret_every and state.step % tc.interpret_every == 0 and run.ctx.is_main:
            log.interpret(_probe(run, state))
        saved = state.step % run.interval == 0 or state.step == tc.max_steps
        if saved:
            _checkpoint(run, state, log)
        if early and state.step < tc.max_steps:
            if not saved:
                _checkpoint(run, state, log)
            ending.stopped = ending.early_stopped = True
            break
    ending.seconds = time.perf_counter() - started
    return ending


def _next_batches(
    run: _Run, step: int
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[int], list[int], bool]:
    """Step `step`'s micro-batches, their token counts (this rank's, all ranks'), and whether to stop.

    One collective before the step: whether any rank must stop, and each micro-batch's token
    count over all ranks, which `_optimizer_step` needs to weigh each rank's loss.
    """
    tc = run.tc
    first = step * tc.grad_accum
    source = run.pretrain_batches if run.pretrain_batches and step < tc.pretrain_steps else run.train_batches
    batches = [trim_padding(*source.get(first + m)) for m in range(tc.grad_accum)]
    own = [int((y != IGNORE_INDEX).sum()) for _, y in batches]
    local = [int(_is_set(run.stop_flag)), *own]
    if run.ctx.active:
        local = all_sum(run.ctx, torch.tensor(local, device=run.dev)).tolist()
    stop, *counts = local
    return batches, own, counts, bool(stop)


def _optimizer_step(
    run: _Run,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    own: list[int],
    counts: list[int],
    lr: float,
) -> float:
    """One update over the micro-batches; the step's loss, the mean of their mean token losses.

    Under DDP each rank's mean is weighed by its share of the micro-batch's tokens, so DDP's
    average of gradients is the gradient of the whole batch's mean loss.
    """
    tc, ctx, dev = run.tc, run.ctx, run.dev
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=dev)
    for micro, ((x, y), n, n_all) in enumerate(zip(batches, own, counts, strict=True)):
        last = micro == tc.grad_accum - 1
        with run.ddp.no_sync() if run.ddp is not None and not last else contextlib.nullcontext():
            with autocast(dev, tc.precision):
                loss = run.model(x.to(dev), y.to(dev)).loss
            if ctx.active:
                share = n / n_all
                (loss * (share * ctx.world_size / tc.grad_accum)).backward()
                total += loss.detach() * share
            else:
                (loss / tc.grad_accum).backward()
                total += loss.detach()
    if tc.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.gpt.parameters(), tc.grad_clip)
    run.optimizer.step()
    return float((all_sum(ctx, total) / tc.grad_accum).item())


def _evaluate(run: _Run, state: RunState) -> dict[str, Any]:
    """Evaluate, track the best (saving its weights) and early stopping; the metrics record."""
    tc = run.tc
    val = evaluate(run.fast, run.val_batches, tc.eval_steps, run.dev, ctx=run.ctx, precision=tc.precision)
    if state.record_eval(val):
        _save_best(run, state)
    return {"kind": "eval", "step": state.step, "val_loss": val, "best_val_loss": state.best_val_loss}


def _probe(run: _Run, state: RunState) -> dict[str, Any]:
    """The interpretability probe's figures at this step (induction score, attention entropy).

    It draws from its own seeded generator and runs in eval mode, so the run's RNG streams and
    therefore its losses are the same with or without it.
    """
    return {"kind": "interpret", "step": state.step, **probe(run.gpt)}


def _servable(run: _Run) -> nn.Module:
    """The weights as served: a LoRA run's merged into a copy, training goes on unmerged."""
    return merge_lora(copy.deepcopy(run.gpt)) if run.lora is not None else run.gpt


def _save_best(run: _Run, state: RunState) -> None:
    """out_dir/best: the weights of the best evaluation so far, no optimizer state."""
    if not run.ctx.is_main:
        return
    best = {"step": state.step, "val_loss": state.best_val_loss}
    save_checkpoint(
        run.out / BEST_DIR,
        _servable(run),
        tokenizer=run.tokenizer,
        preset=run.preset.name,
        trainer_state={**best, "data": state.data, "train": run.tc.model_dump(mode="json"), **state.lineage},
        metadata={"data": state.data, **best},
    )


def _checkpoint(run: _Run, state: RunState, log: MetricsLog) -> None:
    """out_dir/checkpoint: weights, optimizer and the run state, replaced atomically (rank 0)."""
    if not run.ctx.is_main:
        return
    state.rng = rng_state()
    if run.lora is not None:
        # Adapters first, then the checkpoint that records their digest: a crash between
        # the two leaves a pair that resume recognises as torn instead of mixing them.
        blob = adapters_bytes(run.gpt, run.lora)
        state.adapters_sha256 = hashlib.sha256(blob).hexdigest()
        atomic_write_bytes(run.out / ADAPTERS_FILE, blob)
    save_checkpoint(
        run.ckpt_dir,
        _servable(run),
        tokenizer=run.tokenizer,
        preset=run.preset.name,
        optimizer=run.optimizer,
        trainer_state=state.to_json(),
        metadata={"data": state.data, "step": state.step},
    )
    log.checkpoint(run.ckpt_dir, state.step)


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
        prepared, _ = prepare_dataset(
            source, cache_dir=cache_dir, tokenizer=tokenizer, mode=tc.data_mode, loss_on=tc.loss_on
        )
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
        loss_on=tc.loss_on,
    )
    return prepared, load_tokenizer(prepared / TOKENIZER_FILE)


def _restore(out: Path, model: GPT, optimizer: torch.optim.Optimizer, now: RunState) -> RunState:
    """Load weights, optimizer and RNG states from `out`'s checkpoint; its state under `now`'s
    recipe. A different recipe is refused (RunState.check_resumable).

    Data and base weights are compared by content (sha256), not by path, so a run moves
    between machines whose caches live elsewhere (the trainer service's workers). A LoRA run
    takes its frozen weights from the base (checked by digest) and its adapters from
    out_dir/adapters.safetensors (checked against the digest the checkpoint recorded).
    """
    ckpt_dir = out / CHECKPOINT_DIR
    saved_model = read_config(ckpt_dir).model
    if saved_model != now.model:
        diff = diff_settings(saved_model.model_dump(), now.model.model_dump(), "model")
        raise ValueError(f"cannot resume {ckpt_dir}: {diff}")
    ckpt = load_checkpoint(ckpt_dir, device=next(model.parameters()).device)
    saved = RunState.from_json(ckpt.trainer_state, where=ckpt_dir)
    saved.check_resumable(now, where=ckpt_dir)
    if "lora" in now.lineage:
        adapters_path = out / ADAPTERS_FILE
        blob = adapters_path.read_bytes() if adapters_path.is_file() else b""
        if hashlib.sha256(blob).hexdigest() != saved.adapters_sha256:
            raise ValueError(
                f"cannot resume {ckpt_dir}: {adapters_path} is missing or is not the one its checkpoint "
                f"recorded (a save was interrupted between the two); restart the finetune"
            )
        load_adapters(adapters_path, model)
    else:
        model.load_state_dict(ckpt.model.state_dict())
    load_optimizer_state(ckpt_dir, optimizer)
    set_rng_state(saved.rng)
    return saved.resumed_under(now)
