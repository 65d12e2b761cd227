"""Held-out evaluation of a checkpoint: mean loss, perplexity and bits per byte over a whole split.

    microgpt eval runs/names/checkpoint --data names-32k            # the val split
    microgpt eval runs/shakespeare/checkpoint --data input.txt --split train --max-batches 50
    microgpt eval runs/chat-tiny/checkpoint --tasks add,reverse,names   # accuracy: microgpt.task_eval

    result = evaluate_checkpoint("runs/names/checkpoint", "names-32k", cache_dir=cache)
    result.loss, result.perplexity, result.bits_per_byte

Design choices a reader must know:

- The data is prepared with the checkpoint's own tokenizer (its ids are what the model
  learned), in the data mode the checkpoint was trained with when its trainer state says so.
  A prepared directory (one holding manifest.json) is used as it is, after checking that its
  tokenizer is the checkpoint's. Text the tokenizer cannot encode is a ValueError.
- Evaluation is deterministic and covers the split once: every token after the first of its
  range is a target exactly once. A range is the whole split in `stream` mode and one
  document (BOS ... EOS) in `documents` mode; it is cut into consecutive windows of
  block_size + 1 tokens that overlap by one token, so a window's first token is context only.
  Windows are batched with padding whose targets are ignored. `max_batches` stops early.
- Bits per byte normalise away the tokenizer: total nats / ln 2 / the UTF-8 bytes of the
  text the target tokens decode to (special tokens such as BOS/EOS decode to nothing, yet
  predicting them still counts in the loss). Models with different tokenizers compare on it.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from microgpt.model_source import add_model_arguments

if TYPE_CHECKING:  # torch and numpy load only when a command runs
    import numpy as np

    from microgpt.data.shards import SplitReader
    from microgpt.data.sources import Mode
    from microgpt.model import GPT
    from microgpt.precision import Precision
    from microgpt.tokenizers import Tokenizer

DEFAULT_BATCH_SIZE = 8


@dataclass(frozen=True)
class EvalResult:
    """Figures over the evaluated targets; `tokens` counts targets, `bytes` their decoded UTF-8."""

    loss: float  # mean cross-entropy per target token, in nats
    perplexity: float  # exp(loss)
    bits_per_byte: float  # total nats / ln 2 / bytes
    tokens: int
    bytes: int
    windows: int
    split: str
    mode: str
    prepared: Path

    def summary(self) -> str:
        return (
            f"loss {self.loss:.4f} | perplexity {self.perplexity:.3f} | bits/byte {self.bits_per_byte:.4f} "
            f"| {self.tokens:,} tokens, {self.bytes:,} bytes, {self.windows:,} windows "
            f"({self.split} split, {self.mode} mode)"
        )


def evaluate_checkpoint(
    ckpt_path: str | os.PathLike[str],
    data: str,
    *,
    cache_dir: str | os.PathLike[str],
    split: str = "val",
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batches: int | None = None,
    mode: Mode | None = None,
    precision: Precision | None = None,
    device: str = "cpu",
) -> EvalResult:
    """Load the checkpoint at `ckpt_path`, prepare `data` with its tokenizer and evaluate one split.

    `data` is a built-in data set, a text/JSONL file, directory or glob, or a prepared
    directory. `mode` overrides the data mode (default: the checkpoint's training mode,
    else the data set's). Every problem is a ValueError naming it.
    """
    from microgpt.loading import load_model

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    ckpt = load_model(ckpt_path, precision=precision, device=device)
    tokenizer = ckpt.text_tokenizer()
    trained_mode = (ckpt.trainer_state or {}).get("train", {}).get("data_mode")
    prepared = prepare_for(tokenizer, data, cache_dir=cache_dir, mode=mode, default_mode=trained_mode)
    return evaluate_prepared(
        ckpt.model, tokenizer, prepared, split=split, batch_size=batch_size, max_batches=max_batches
    )


def prepare_for(
    tokenizer: Tokenizer,
    data: str,
    *,
    cache_dir: str | os.PathLike[str],
    mode: Mode | None = None,
    default_mode: Mode | None = None,
) -> Path:
    """`data` prepared with exactly `tokenizer`: a prepared directory checked, anything else prepared.

    `mode` is required of a prepared directory too; `default_mode` applies only when preparing.
    """
    from microgpt.data.manifest import MANIFEST_FILE, check_tokenizer, read_manifest
    from microgpt.data.prepare import prepare_dataset

    path = Path(data).expanduser()
    if (path / MANIFEST_FILE).is_file():
        manifest = read_manifest(path)
        check_tokenizer(manifest, tokenizer, where=str(path))
        if mode is not None and manifest.mode != mode:
            raise ValueError(f"{path} was prepared in {manifest.mode} mode, not {mode}")
        return path
    try:
        prepared, _ = prepare_dataset(
            data, cache_dir=cache_dir, tokenizer=tokenizer, mode=mode or default_mode
        )
    except ValueError as e:
        raise ValueError(
            f"cannot prepare {data!r} with the checkpoint's {tokenizer.kind} tokenizer: {e}"
        ) from e
    return prepared


def evaluate_prepared(
    model: GPT,
    tokenizer: Tokenizer,
    prepared: str | os.PathLike[str],
    *,
    split: str = "val",
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batches: int | None = None,
) -> EvalResult:
    """Evaluate `model` over one split of a prepared directory made with `tokenizer` (see the module)."""
    import torch
    import torch.nn.functional as F

    from microgpt.data.batches import IGNORE_INDEX, PAD_INPUT
    from microgpt.data.manifest import check_tokenizer, check_vocab, read_manifest
    from microgpt.data.shards import SplitReader

    directory = Path(prepared)
    manifest = read_manifest(directory)
    check_tokenizer(manifest, tokenizer, where=str(directory))
    check_vocab(manifest.vocab_size, model.config.vocab_size)
    reader = SplitReader(directory, manifest, split)
    T = model.config.block_size
    device = next(model.parameters()).device

    nats, tokens, windows, batches = 0.0, 0, 0, 0
    counter = _ByteCounter(tokenizer)
    batch: list[np.ndarray] = []

    def run(batch: list[np.ndarray]) -> float:
        x = torch.full((len(batch), T), PAD_INPUT, dtype=torch.long)
        y = torch.full((len(batch), T), IGNORE_INDEX, dtype=torch.long)
        for row, window in enumerate(batch):
            w = torch.from_numpy(window)
            x[row, : len(w) - 1], y[row, : len(w) - 1] = w[:-1], w[1:]
        logits = model(x.to(device)).logits.float()  # (B, T, V); batch sums add up in a Python float
        loss = F.cross_entropy(
            logits.flatten(0, 1), y.to(device).flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return float(loss)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for window, first in _windows(reader, manifest.mode, T):
                if max_batches is not None and batches >= max_batches:
                    break
                counter.add(window[1:].tolist(), new_range=first)
                tokens += len(window) - 1
                windows += 1
                batch.append(window)
                if len(batch) == batch_size:
                    nats += run(batch)
                    batches, batch = batches + 1, []
            if batch:
                nats += run(batch)
    finally:
        model.train(was_training)
    n_bytes = counter.finish()
    if tokens == 0:
        raise ValueError(f"the {split} split of {directory} has no tokens to evaluate")
    if n_bytes == 0:
        raise ValueError(
            f"the {split} split of {directory} decodes to no text, so bits per byte is undefined"
        )
    loss = nats / tokens
    return EvalResult(
        loss=loss,
        perplexity=math.exp(loss),
        bits_per_byte=nats / math.log(2) / n_bytes,
        tokens=tokens,
        bytes=n_bytes,
        windows=windows,
        split=split,
        mode=manifest.mode,
        prepared=directory,
    )


def _windows(reader: SplitReader, mode: str, block_size: int) -> Iterator[tuple[np.ndarray, bool]]:
    """Windows of at most block_size + 1 tokens overlapping by one, and whether each starts a range."""
    if mode == "stream":
        ranges: Iterator[tuple[int, int]] = iter([(0, reader.tokens)])
    else:
        ranges = (reader.document(i) for i in range(reader.documents))
    for begin, end in ranges:
        for start in range(begin, end - 1, block_size):
            yield reader.read(start, min(block_size + 1, end - start)), start == begin


class _ByteCounter:
    """UTF-8 bytes of the text a range's target tokens decode to, fed one window at a time.

    A window boundary can fall inside a multi-byte character (byte-level tokenizers), which
    decodes to U+FFFD on its own; such a tail of up to 3 tokens is carried to the next window.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer, self.bytes = tokenizer, 0
        self.carry: list[int] = []

    def add(self, ids: list[int], *, new_range: bool) -> None:
        if new_range:
            self._drain()
        ids = self.carry + ids
        text = self.tokenizer.decode(ids)
        for k in range(1, min(3, len(ids)) + 1) if text.endswith("\ufffd") else ():
            head = self.tokenizer.decode(ids[:-k])
            if not head.endswith("\ufffd"):
                self.bytes += len(head.encode("utf-8"))
                self.carry = ids[-k:]
                return
        self.bytes += len(text.encode("utf-8"))
        self.carry = []

    def _drain(self) -> None:
        if self.carry:
            self.bytes += len(self.tokenizer.decode(self.carry).encode("utf-8"))
            self.carry = []

    def finish(self) -> int:
        self._drain()
        return self.bytes


def cmd_eval(args: argparse.Namespace) -> None:
    from microgpt.settings import get_settings

    if args.tasks is not None:
        _cmd_eval_tasks(args)
        return
    if args.data is None:
        raise ValueError("give --data (loss, perplexity, bits per byte) or --tasks (accuracy per task)")
    if args.limit is not None:
        raise ValueError("--limit is for --tasks; a loss evaluation stops early with --max-batches")
    split = args.split or "val"
    if split not in ("train", "val"):
        raise ValueError(f"--split {split} is for --tasks; a loss evaluation reads val or train")
    result = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        cache_dir=get_settings().cache,
        split=split,
        batch_size=args.batch_size if args.batch_size is not None else DEFAULT_BATCH_SIZE,
        max_batches=args.max_batches,
        mode=args.mode,
        precision=args.precision,
        device=args.device,
    )
    print(f"loss        {result.loss:.4f}")
    print(f"perplexity  {result.perplexity:.3f}")
    print(f"bits/byte   {result.bits_per_byte:.4f}")
    print(
        f"({result.tokens:,} tokens, {result.bytes:,} bytes, {result.windows:,} windows; "
        f"{result.split} split of {result.prepared}, {result.mode} mode)"
    )


def _cmd_eval_tasks(args: argparse.Namespace) -> None:
    from microgpt.settings import get_settings
    from microgpt.task_eval import DEFAULT_BATCH_SIZE as REPLIES_PER_BATCH
    from microgpt.task_eval import evaluate_checkpoint_tasks, report

    if args.max_batches is not None or args.mode is not None:
        raise ValueError("--max-batches and --mode are for loss evaluations; --tasks takes --limit")
    split = args.split or "test"
    if split not in ("train", "validation", "test"):
        raise ValueError(f"--tasks reads the train, validation or test split, not {split}")
    scores = evaluate_checkpoint_tasks(
        args.checkpoint,
        args.tasks,
        cache_dir=get_settings().cache,
        data=args.data,
        split=split,
        limit=args.limit,
        batch_size=args.batch_size if args.batch_size is not None else REPLIES_PER_BATCH,
        device=args.device,
        precision=args.precision,
    )
    print(report(scores))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `eval` to the main parser's subcommands."""
    p = subparsers.add_parser(
        "eval", help="loss, perplexity and bits per byte on a data set; or accuracy per task (--tasks)"
    )
    add_model_arguments(p)
    p.add_argument(
        "--data",
        default=None,
        help="built-in data set, text/JSONL file, directory, glob or prepared directory; with --tasks, "
        "a messages JSONL file (default: the built-in tasks' split)",
    )
    p.add_argument(
        "--tasks",
        default=None,
        help="accuracy per task with greedy replies, e.g. add,reverse,names or all (microgpt.task_eval)",
    )
    p.add_argument(
        "--split",
        choices=["val", "train", "validation", "test"],
        default=None,
        help="val or train for a loss (default val); test, validation or train for --tasks (default test)",
    )
    p.add_argument("--limit", type=int, default=None, help="--tasks: the first N conversations of each task")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"windows per forward pass (default {DEFAULT_BATCH_SIZE}); replies per batch with --tasks (64)",
    )
    p.add_argument(
        "--max-batches", type=int, default=None, help="stop after N batches (default: the whole split)"
    )
    p.add_argument(
        "--mode",
        choices=["documents", "stream"],
        default=None,
        help="data mode (default: the checkpoint's training mode, else the data set's)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.set_defaults(run=cmd_eval)
