"""Shared-memory all-reduce: gloo's sums, bit for bit the same on every rank, for tensors larger
than a slot, several dtypes and many rounds in a row; nothing is left in /dev/shm."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from microgpt.processes import free_port
from microgpt.train.shared_memory import SLOT_BYTES, SharedMemoryAllReduce

pytestmark = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="the shared-memory path is x86-only"
)


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        shared = SharedMemoryAllReduce(rank, world)
        torch.manual_seed(rank)
        tensors = [
            torch.randn(SLOT_BYTES // 4 * 2 + 123),  # three chunks
            torch.randn(7, 5).bfloat16(),
            torch.tensor([rank + 1, 10**12], dtype=torch.int64),
        ] + [torch.randn(1000) for _ in range(50)]  # rounds reuse both halves many times
        results = []
        for t in tensors:
            ours = shared.all_sum_(t.clone())
            theirs = t.clone()
            dist.all_reduce(theirs)
            results.append((ours, theirs))
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sums_match_gloo_and_are_identical_on_every_rank(tmp_path: Path) -> None:
    before = set(os.listdir("/dev/shm"))
    mp.spawn(_rank, args=(2, free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for (ours0, theirs0), (ours1, _) in zip(*ranks, strict=True):
        assert torch.equal(ours0, ours1)  # the same bits everywhere, or DDP replicas drift apart
        torch.testing.assert_close(ours0, theirs0, rtol=1e-6, atol=1e-6)
    assert ranks[0][2][0].tolist() == [3, 2 * 10**12]
    assert set(os.listdir("/dev/shm")) == before
