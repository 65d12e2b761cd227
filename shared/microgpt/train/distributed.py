"""Data-parallel set-up for the training loop: who am I, and the few collectives it needs.

    torchrun --nproc_per_node 2 -m microgpt train --preset names     # 2 processes, one loop

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; `init_distributed` reads them and joins
the process group (gloo on CPU, nccl on CUDA, each process on cuda:LOCAL_RANK). Without
them it returns a single-process context and touches nothing, so the loop has one code
path. The collectives are no-ops for one process, which keeps a 1-process run bit for
bit what it was before DDP existed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from microgpt.train.shared_memory import SharedMemoryAllReduce, usable

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owned: bool = False  # this context created the process group, so its cleanup destroys it
    # Ranks on one CPU host sum through shared memory (gradients and the loop's scalars), not gloo.
    shared: SharedMemoryAllReduce | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics and progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in _ENV)


def init_distributed(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join (or reuse) the process group torchrun describes; the context and this rank's device.

    A CUDA device becomes cuda:LOCAL_RANK. Without torchrun's variables nothing happens.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        owned = False
    elif launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        rank, world, local = (int(os.environ[k]) for k in _ENV)
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owned = True
    else:
        return DistContext(), device
    if device.type == "cuda":
        device = torch.device("cuda", local)
    shared = SharedMemoryAllReduce(rank, world) if device.type == "cpu" and usable(world) else None
    return DistContext(rank=rank, world_size=world, local_rank=local, owned=owned, shared=shared), device


def cleanup(ctx: DistContext) -> None:
    if ctx.owned and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()


def all_sum(ctx: DistContext, value: torch.Tensor) -> torch.Tensor:
    """The sum of `value` over all ranks (a new tensor; `value` itself for one process)."""
    if not ctx.active:
        return value
    out = value.clone(memory_format=torch.contiguous_format)
    if ctx.shared is not None:
        return ctx.shared.all_sum_(out)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out
