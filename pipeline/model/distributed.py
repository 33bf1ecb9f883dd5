"""Training with several processes under torchrun: the process group, ranks, and the few collective
calls the loop needs besides the gradient averaging, which is DistributedDataParallel's (train.py).

    torchrun --standalone --nproc-per-node 2 --no-python bookrec train

torchrun starts the processes and sets RANK, WORLD_SIZE, LOCAL_WORLD_SIZE and the rendezvous
address; `process_group()` joins them when WORLD_SIZE > 1 and does nothing otherwise, so a plain
`bookrec train` (no torchrun, no WORLD_SIZE) runs exactly the single-process code it always ran.
Every helper here answers for one process (rank 0 of 1) when no group is initialised.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist


def requested() -> bool:
    """torchrun (or any launcher with its environment) asked for more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """A process group of more than one process is initialised: training is data-parallel."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the one process that validates, reports and writes outputs."""
    return rank() == 0


def local_processes() -> int:
    """Processes of this group on this machine (torchrun's LOCAL_WORLD_SIZE), to share its cores."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if active() else 1


def backend() -> str:
    """gloo for CPU tensors; with CUDA, NCCL for CUDA tensors and gloo still for CPU ones (the model
    trains on the CPU today, so a CUDA machine must not route its CPU gradients to NCCL)."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


@contextmanager
def process_group() -> Iterator[None]:
    """Joins torchrun's process group for the duration of the block when WORLD_SIZE > 1 and no group is
    initialised yet (then leaves it); otherwise does nothing."""
    if not requested() or (dist.is_available() and dist.is_initialized()):
        yield
        return
    dist.init_process_group(backend())
    try:
        yield
    finally:
        dist.destroy_process_group()


def rank_seed(seed: int) -> int:
    """A seed of this rank's own random streams (negative sampling, dropout), derived from the run's
    seed: ranks must not draw the same negatives for the different positives they hold."""
    return int(np.random.SeedSequence([seed, rank()]).generate_state(1)[0])


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This rank's part of a global batch: every world_size-th element from its rank on, so the parts
    are disjoint, cover the batch and differ in size by at most one."""
    return batch[rank() :: world_size()]


def from_main(values: list[float]) -> list[float]:
    """Rank 0's `values` on every rank (float64): decisions taken on rank 0 (validation figure, elapsed
    time) reach every rank, so that all of them stop at the same epoch."""
    if not active():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.broadcast(tensor, src=0)
    return tensor.tolist()


def mean_over_ranks(value: float) -> float:
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor) / world_size()
