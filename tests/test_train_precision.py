"""bf16 autocast training: fp32 master weights, a bf16 forward, and a loss that still falls."""

from __future__ import annotations

from pathlib import Path

import torch

from microgpt.checkpoint import load_checkpoint
from microgpt.train.loop import train


def test_bf16_autocast_trains_with_fp32_weights(tmp_path: Path) -> None:
    overrides = {"max_steps": 300, "eval_interval": 300, "precision": "bf16"}
    result = train("micro", out_dir=tmp_path / "run", cache_dir=tmp_path / "cache", data="names",
                   train_overrides=overrides)  # fmt: skip
    early, late = sum(result.losses[:50]) / 50, sum(result.losses[-50:]) / 50
    assert late < early - 0.3, (early, late)
    ckpt = load_checkpoint(result.checkpoint)
    assert all(p.dtype == torch.float32 for p in ckpt.model.parameters())
    assert result.val_loss is not None and result.val_loss < 2.6
