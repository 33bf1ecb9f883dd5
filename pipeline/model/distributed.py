"""Training with several processes under torchrun: the process group, ranks, the gradient averaging
and the few collective calls the loop needs.

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


def local_rank() -> int:
    """This process's index among the group's processes on this machine (torchrun's LOCAL_RANK)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def local_processes() -> int:
    """Processes of this group on this machine (torchrun's LOCAL_WORLD_SIZE), to share its cores."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if active() else 1


def backend() -> str:
    """gloo for CPU tensors; with CUDA, NCCL for CUDA tensors and gloo still for CPU ones (the
    broadcasts of rank 0's decisions are CPU tensors wherever the model trains)."""
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


def average_gradients(parameters) -> None:
    """Replace every gradient by its mean over the ranks, after each rank's backward pass.

    Dense gradients (the MLP) are all-reduced. The embedding tables' gradients are sparse (the rows a
    shard touched): NCCL cannot all-reduce sparse tensors and gloo's sparse all-reduce has broken
    before, so each rank's rows and values are all-gathered as dense tensors (every backend has
    all_gather) and summed by coalescing. The cost follows the rows the batch touched, never the
    table, and every rank ends with the same gradient."""
    if not active():
        return
    world = world_size()
    for parameter in parameters:
        grad = parameter.grad
        if grad is None:
            continue
        if grad.is_sparse:
            parameter.grad = _gathered_sparse(grad.coalesce(), world)
        else:
            dist.all_reduce(grad)
            grad /= world


def _gathered_sparse(grad: torch.Tensor, world: int) -> torch.Tensor:
    """The sum over ranks of a coalesced sparse row gradient, divided by the number of ranks."""
    rows, values = grad.indices()[0], grad.values()
    counts = [torch.zeros(1, dtype=torch.long, device=rows.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([len(rows)], device=rows.device))
    longest = int(max(counts))
    padded_rows = torch.zeros(longest, dtype=rows.dtype, device=rows.device)
    padded_rows[: len(rows)] = rows
    padded_values = values.new_zeros((longest, *values.shape[1:]))
    padded_values[: len(rows)] = values
    all_rows = [torch.empty_like(padded_rows) for _ in range(world)]
    all_values = [torch.empty_like(padded_values) for _ in range(world)]
    dist.all_gather(all_rows, padded_rows)
    dist.all_gather(all_values, padded_values)
    sizes = [int(count) for count in counts]
    gathered_rows = torch.cat([part[:size] for part, size in zip(all_rows, sizes, strict=True)])
    gathered_values = torch.cat([part[:size] for part, size in zip(all_values, sizes, strict=True)])
    return torch.sparse_coo_tensor(gathered_rows.unsqueeze(0), gathered_values / world, grad.shape).coalesce()
