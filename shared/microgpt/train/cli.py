"""`microgpt train`: the training loop from the command line, with overrides and resume.

    microgpt train --preset micro                                # microgpt's recipe on names
    microgpt train --preset shakespeare-cpu --set model.n_layer=2 --set train.lr=3e-4
    microgpt train --preset micro --out runs/micro --resume      # continue after a stop

`--set section.key=value` overrides one field of the preset's model (GPTConfig) or train
(TrainConfig) config; the value is read as JSON when it parses (numbers, booleans, lists)
and as a string otherwise. An unknown key is a ValueError naming it. SIGTERM or Ctrl-C
finishes the current step, checkpoints and exits; `--resume` continues exactly.
The cache directory comes from the settings (`MICROGPT_CACHE`) here and nowhere below.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

SECTIONS = ("model", "train")


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """`["model.n_layer=2", "train.lr=3e-4"]` -> {"model": {"n_layer": 2}, "train": {"lr": 0.0003}}."""
    from microgpt.config import GPTConfig, TrainConfig

    fields = {"model": GPTConfig.model_fields, "train": TrainConfig.model_fields}
    out: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for item in items:
        key, eq, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not eq or not dot or not name:
            raise ValueError(f"--set takes section.key=value (e.g. model.n_layer=2), got {item!r}")
        if section not in SECTIONS:
            raise ValueError(f"unknown setting {key!r}: the section must be model or train")
        if name not in fields[section]:
            raise ValueError(
                f"unknown setting {key!r}; {section} settings are: {', '.join(sorted(fields[section]))}"
            )
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out[section][name] = value
    return out


class _Progress:
    """Prints a line about every 10% of the run, and each evaluation."""

    def __init__(self, max_steps: int) -> None:
        self.max_steps = max_steps
        self.every = max(1, max_steps // 10)

    def on_step(self, record: dict[str, Any]) -> None:
        step = record["step"]
        if step == 1 or step % self.every == 0 or step == self.max_steps:
            print(
                f"step {step:>{len(str(self.max_steps))}} / {self.max_steps} | loss {record['loss']:.4f} "
                f"| lr {record['lr']:.3e} | {record['tokens_per_s']:,.0f} tok/s",
                flush=True,
            )

    def on_eval(self, record: dict[str, Any]) -> None:
        print(f"step {record['step']} | val loss {record['val_loss']:.4f}", flush=True)

    def on_checkpoint(self, path: Path, step: int) -> None:
        pass


def cmd_train(args: argparse.Namespace) -> None:
    from microgpt.settings import get_settings
    from microgpt.zoo import get_preset

    overrides = parse_overrides(args.set or [])
    if args.max_steps is not None:
        overrides["train"]["max_steps"] = args.max_steps
    preset = get_preset(args.preset, model=overrides["model"], train=overrides["train"])  # before torch loads

    from microgpt.train.loop import train
    from microgpt.train.signals import stop_on_signals

    out = Path(args.out) if args.out else Path("runs") / preset.name
    with stop_on_signals() as stop:
        result = train(
            preset,
            out_dir=out,
            cache_dir=get_settings().cache,
            data=args.data,
            checkpoint_interval=args.checkpoint_interval,
            resume=args.resume,
            callbacks=[_Progress(preset.train.max_steps)],
            stop_flag=stop,
            device=args.device,
        )
    if result.stopped:
        print(f"stopped at step {result.step}; continue with --resume --out {out}")
    else:
        val = "n/a" if result.val_loss is None else f"{result.val_loss:.4f}"
        print(f"done: {result.step} steps in {result.wall_seconds:.1f}s, final val loss {val}")
    print(f"checkpoint: {result.checkpoint}; try: microgpt sample {result.checkpoint}")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `train` to the main parser's subcommands."""
    p = subparsers.add_parser("train", help="train a preset on a data set (checkpoints, resume)")
    p.add_argument("--preset", required=True, help="a zoo preset (see `microgpt zoo`)")
    p.add_argument("--data", default=None, help="built-in data set or path (default: the preset's)")
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override a model.* or train.* setting (repeatable)",
    )
    p.add_argument("--out", default=None, help="run directory (default: runs/PRESET)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--max-steps", type=int, default=None, help="shorthand for --set train.max_steps=N")
    p.add_argument(
        "--checkpoint-interval",
        type=int,
        default=None,
        help="steps between checkpoints (default: eval interval)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(run=cmd_train)
