"""`microgpt train`: the training loop from the command line, with overrides and resume.

    microgpt train --preset micro                                # microgpt's recipe on names
    microgpt train --preset shakespeare-cpu --set model.n_layer=2 --set train.lr=3e-4
    microgpt train --preset micro --out runs/micro --resume      # continue after a stop
    microgpt finetune runs/names/checkpoint --data new.txt --lora-rank 8   # LoRA on new data
    microgpt train --preset chat-tiny                            # a chat model: pretraining, then SFT
    microgpt finetune runs/chat-tiny/checkpoint --sft --data my_chats.jsonl   # SFT on your conversations
    microgpt train --preset micro --local-path names.txt         # offline: a copy of the data set
    torchrun --nproc_per_node 2 -m microgpt train --preset names    # data-parallel (DDP)

`--set section.key=value` overrides one field of the preset's model (GPTConfig) or train
(TrainConfig) config; the value is read as JSON when it parses (numbers, booleans, lists)
and as a string otherwise. An unknown key is a ValueError naming it. SIGTERM or Ctrl-C
finishes the current step, checkpoints and exits; `--resume` continues exactly.
The cache directory comes from the settings (`MICROGPT_CACHE`) here and nowhere below.
`finetune` starts from a checkpoint with its architecture and tokenizer and the recipe it
was trained with (its trainer state, else its preset's), overridden by `--set`; a checkpoint
that records no recipe (one `microgpt import hf` made) takes a preset's with `--preset`, as a
finetune job names one. Under torchrun only rank 0 prints.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """`--set section.key=value` items as {"model": {...}, "train": {...}} (see run_config)."""
    from microgpt.run_config import parse_set_overrides

    model, train = parse_set_overrides(items)
    return {"model": model, "train": train}


class _Progress:
    """A tqdm bar (loss, lr, tokens/s, ETA) on a terminal; a line every 10% of the run otherwise."""

    def __init__(self, max_steps: int, *, bar: bool) -> None:
        from tqdm import tqdm

        self.max_steps = max_steps
        self.every = max(1, max_steps // 10)
        self.bar = tqdm(total=max_steps, unit="step", dynamic_ncols=True) if bar else None

    def on_step(self, record: dict[str, Any]) -> None:
        step = record["step"]
        if self.bar is not None:
            self.bar.update(step - self.bar.n)  # a resumed run starts past 0
            self.bar.set_postfix(
                loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:,.0f}"
            )
            if step == self.max_steps:
                self.bar.close()
        elif step == 1 or step % self.every == 0 or step == self.max_steps:
            print(
                f"step {step:>{len(str(self.max_steps))}} / {self.max_steps} | loss {record['loss']:.4f} "
                f"| lr {record['lr']:.3e} | {record['tokens_per_s']:,.0f} tok/s",
                flush=True,
            )

    def on_eval(self, record: dict[str, Any]) -> None:
        val, best = record["val_loss"], record["best_val_loss"]
        self._say(f"step {record['step']} | val loss {val:.4f} (best {best:.4f})")

    def on_interpret(self, record: dict[str, Any]) -> None:
        self._say(
            f"step {record['step']} | induction score {record['induction_score']:.3f}, "
            f"attention entropy {record['attention_entropy']:.3f}"
        )

    def _say(self, line: str) -> None:
        """A line between steps: above the bar on a terminal, else printed."""
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def on_checkpoint(self, path: Path, step: int) -> None:
        pass

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def cmd_train(args: argparse.Namespace) -> None:
    from microgpt.run_config import from_command_line

    config = from_command_line(
        config=args.config, preset=args.preset, sets=args.set or [], max_steps=args.max_steps
    )
    preset = config.to_preset()  # validated before torch loads
    args.data = args.data or config.data  # the command line wins over the file
    out = Path(args.out or config.out or Path("runs") / preset.name)
    _run(args, preset, out, {"model": config.model, "train": config.train})


def cmd_finetune(args: argparse.Namespace) -> None:
    from microgpt.checkpoint import load_checkpoint
    from microgpt.config import SFT_SETTINGS, TrainConfig
    from microgpt.train.lora import LoRAConfig
    from microgpt.zoo import PRESETS, Preset, get_preset

    overrides = parse_overrides(args.set or [])
    if args.max_steps is not None:
        overrides["train"]["max_steps"] = args.max_steps
    if args.sft:
        for key in ("loss_on", "data_mode"):
            if overrides["train"].get(key, SFT_SETTINGS[key]) != SFT_SETTINGS[key]:
                raise ValueError(f"--sft trains with train.{key}={SFT_SETTINGS[key]}; drop --set train.{key}")
        overrides["train"] = {**SFT_SETTINGS, **overrides["train"]}
        args.data = args.data or "chat"
    elif args.data is None:
        raise ValueError("finetune needs --data (with --sft it defaults to the built-in chat conversations)")
    base = load_checkpoint(args.checkpoint)
    state = base.trainer_state or {}
    if args.preset is not None:
        recipe = get_preset(args.preset).train
    elif "train" in state:
        recipe = TrainConfig.model_validate(state["train"])
    elif base.preset in PRESETS:
        recipe = PRESETS[base.preset].train
    else:
        raise ValueError(
            f"{args.checkpoint} records neither its training recipe nor a known preset "
            "(an imported model, say); name the preset whose recipe to use with --preset"
        )
    name = args.preset or base.preset or "checkpoint"
    preset = Preset(name, f"finetune of {args.checkpoint}", base.config, recipe)
    preset = preset.with_overrides(train=overrides["train"])  # model overrides are checked by the loop
    lora = None
    if args.lora_rank is not None:
        extra = {} if args.lora_dropout is None else {"dropout": args.lora_dropout}
        alpha = args.lora_alpha if args.lora_alpha is not None else 2.0 * args.lora_rank
        lora = LoRAConfig(rank=args.lora_rank, alpha=alpha, **extra)
    elif args.lora_alpha is not None or args.lora_dropout is not None:
        raise ValueError("--lora-alpha and --lora-dropout need --lora-rank")
    out = Path(args.out) if args.out else Path("runs") / f"finetune-{name}"
    _run(args, preset, out, overrides, init_from=Path(args.checkpoint), lora=lora)


def _run(args: argparse.Namespace, preset: Any, out: Path, overrides: dict[str, Any], **extra: Any) -> None:
    from microgpt.settings import get_settings
    from microgpt.train.loop import train
    from microgpt.train.signals import stop_on_signals

    if args.local_path is not None:
        _cache_local_copy(args.data or preset.train.dataset, args.local_path)
    progress = _Progress(preset.train.max_steps, bar=sys.stderr.isatty() and _is_main())
    with stop_on_signals() as stop, contextlib.closing(progress):
        result = train(
            preset,
            out_dir=out,
            cache_dir=get_settings().cache,
            data=args.data,
            model_overrides=overrides["model"] if "init_from" in extra else None,
            checkpoint_interval=args.checkpoint_interval,
            resume=args.resume,
            callbacks=[progress],
            stop_flag=stop,
            device=args.device,
            threads=args.threads,
            **extra,
        )
    if not _is_main():
        return
    if result.adapters is not None:
        print(f"adapters: {result.adapters} (the checkpoint holds them merged)")
    if result.early_stopped:
        patience = preset.train.early_stopping_patience
        print(f"early stop at step {result.step}: no better val loss in {patience} evaluations")
    elif result.stopped:
        print(f"stopped at step {result.step}; continue with --resume --out {out}")
    else:
        val = "n/a" if result.val_loss is None else f"{result.val_loss:.4f}"
        print(f"done: {result.step} steps in {result.wall_seconds:.1f}s, final val loss {val}")
    if result.best is not None:
        print(f"best: val loss {result.best_val_loss:.4f} at step {result.best_step} in {result.best}")
    print(f"checkpoint: {result.checkpoint}; try: microgpt sample {result.checkpoint}")


def _cache_local_copy(dataset: str | None, local_path: str) -> None:
    """`--local-path`: a copy of a downloadable data set, checked against its pinned sha256 and put in
    the cache, where training finds it instead of downloading (the way `data prepare` takes it)."""
    from microgpt.data.builtin import fetch
    from microgpt.settings import get_settings

    if dataset is None:
        raise ValueError("--local-path needs --data naming the downloadable data set it is a copy of")
    fetch(dataset, get_settings().cache, local_path=local_path)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `train` to the main parser's subcommands."""
    p = subparsers.add_parser("train", help="train a preset on a data set (checkpoints, resume)")
    p.add_argument("--preset", default=None, help="a zoo preset (see `microgpt zoo`); or give --config")
    p.add_argument("--config", default=None, help="YAML or JSON run config: preset, model, train, data, out")
    p.add_argument("--data", default=None, help="built-in data set or path (default: the preset's)")
    p.add_argument(
        "--set",
        action="extend",
        nargs="+",
        metavar="SECTION.KEY=VALUE",
        help="override model.* or train.* settings (several after one --set, or repeat it)",
    )
    p.add_argument("--out", default=None, help="run directory (default: runs/PRESET)")
    _add_run_options(p)
    p.set_defaults(run=cmd_train)

    f = subparsers.add_parser("finetune", help="finetune a checkpoint on new data (full or LoRA)")
    f.add_argument("checkpoint", help="the base checkpoint directory (its tokenizer is kept)")
    f.add_argument(
        "--data", default=None, help="built-in data set, path, or prepared directory (--sft: default chat)"
    )
    f.add_argument(
        "--sft",
        action="store_true",
        help="supervised finetuning: the loss on the assistant's replies of messages JSONL conversations",
    )
    f.add_argument(
        "--preset",
        default=None,
        help="the zoo preset whose training recipe to use (default: the checkpoint's own recipe)",
    )
    f.add_argument("--set", action="extend", nargs="+", metavar="SECTION.KEY=VALUE", help="override settings")
    f.add_argument("--out", default=None, help="run directory (default: runs/finetune-PRESET)")
    f.add_argument("--lora-rank", type=int, default=None, help="train rank-R LoRA adapters only")
    f.add_argument("--lora-alpha", type=float, default=None, help="LoRA scale numerator (default 2*rank)")
    f.add_argument("--lora-dropout", type=float, default=None, help="dropout on the adapters' input")
    _add_run_options(f)
    f.set_defaults(run=cmd_finetune)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument(
        "--local-path",
        default=None,
        help="a copy of the downloadable data set (checked, then cached) for a machine without network",
    )
    p.add_argument("--max-steps", type=int, default=None, help="shorthand for --set train.max_steps=N")
    p.add_argument(
        "--checkpoint-interval",
        type=int,
        default=None,
        help="steps between checkpoints (default: eval interval)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: cuda, else mps, else cpu)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: 1 for small models)")
