"""The training engine: one loop (`train`) that the CLI, jobs and tests all call.

    from microgpt.train import train
    result = train("micro", out_dir=Path("runs/micro"), cache_dir=Path("~/.cache/microgpt"))

The names are loaded on first use, so `microgpt.cli` can register the `train` command
(`microgpt.train.cli`) without importing torch for every other command.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainCallback", "TrainResult", "lr_at", "stop_on_signals", "train"]


def __getattr__(name: str) -> Any:
    if name in ("TrainCallback", "TrainResult", "lr_at", "train"):
        from microgpt.train import loop

        return getattr(loop, name)
    if name == "stop_on_signals":
        from microgpt.train.signals import stop_on_signals

        return stop_on_signals
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
