"""Data-parallel training: `torchrun --nproc_per_node 2 -m microgpt train` (gloo, CPU) follows
the loss curve of one process with the same global batch, and only rank 0 writes.

Tolerance: per-step train and val losses agree within rtol 1e-5. They are not bit-equal:
two ranks reduce their halves of the batch separately and the sums are combined after,
so float32 rounding differs; Adam then carries those ~1e-7 differences along.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from microgpt.checkpoint import load_checkpoint
from microgpt.processes import free_port

RTOL = 1e-5
STEPS = 20
ARGS = [
    "train",
    "--preset",
    "names",
    "--data",
    "names",
    "--set",
    "train.batch_size=8",
    "--set",
    "model.n_layer=1",
    "--set",
    "model.n_embd=16",
    "--set",
    "model.n_head=2",
    "--set",
    "model.block_size=16",
    "--set",
    "model.dropout=0",  # masks follow each rank's rows: with dropout one process draws others
    "--set",
    "train.warmup_steps=2",
    "--set",
    "train.eval_interval=10",
    "--set",
    "train.eval_steps=2",
    "--max-steps",
    str(STEPS),
    "--device",
    "cpu",
]


def metrics(out: Path) -> tuple[list[float], list[float]]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))  # each step logged once
    return [r["loss"] for r in train], [r["val_loss"] for r in records if r["kind"] == "eval"]


def run(cmd: list[str], cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MICROGPT_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def torchrun() -> list[str]:
    return [
        str(Path(sys.executable).with_name("torchrun")),  # installed with torch, beside python
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "microgpt",
    ]


def test_two_gloo_ranks_follow_the_one_process_loss_curve(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    single = run([sys.executable, "-m", "microgpt", *ARGS, "--out", str(tmp_path / "one")], cache)
    ddp = run([*torchrun(), *ARGS, "--out", str(tmp_path / "two")], cache)

    one_train, one_val = metrics(tmp_path / "one")
    two_train, two_val = metrics(tmp_path / "two")
    assert len(one_val) == len(two_val) == 2
    assert two_train == pytest.approx(one_train, rel=RTOL)
    assert two_val == pytest.approx(one_val, rel=RTOL)
    assert one_train[-1] < one_train[0]

    # Only rank 0 printed and wrote: one "done" line, one run directory's worth of files.
    assert ddp.stdout.count("done:") == single.stdout.count("done:") == 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["best", "checkpoint", "metrics.jsonl"]
    state = load_checkpoint(tmp_path / "two" / "checkpoint").trainer_state
    # The loss history lives in metrics.jsonl alone, one line per step; the checkpoint has none.
    assert state["step"] == STEPS and "losses" not in state and len(two_train) == STEPS


def test_a_ddp_run_stopped_halfway_resumes_into_the_uninterrupted_run(tmp_path: Path) -> None:
    """Rank 0's checkpoint carries the data position, optimizer and RNG states for every rank:
    10 steps, then a resumed run to 20, give the straight 20-step run's losses and weights.
    (A constant lr, so that stopping by a smaller max_steps leaves the schedule unchanged.)"""
    cache = tmp_path / "cache"
    args = [*ARGS, "--set", "train.lr_schedule=constant"]
    run([*torchrun(), *args, "--out", str(tmp_path / "straight")], cache)
    halfway = args.copy()
    halfway[args.index("--max-steps") + 1] = str(STEPS // 2)
    run([*torchrun(), *halfway, "--out", str(tmp_path / "resumed")], cache)
    run([*torchrun(), *args, "--out", str(tmp_path / "resumed"), "--resume"], cache)
    straight, resumed = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert resumed[0] == straight[0]  # train losses, bit for bit
    a = load_checkpoint(tmp_path / "straight" / "checkpoint").model.state_dict()
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
