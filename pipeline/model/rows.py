"""How a training step reads the embedding tables: the rows it touches, once each, with a sparse
gradient of those rows only.

A step's lookups repeat rows by the hundred thousand (every positive and negative book, every side
feature of each); reading each distinct row once and handing the optimizer a coalesced sparse
gradient is what keeps a step's cost independent of the catalog. The read hook lets an optimizer that
defers the updates of untouched rows (`optim.DeferredAdam`) bring rows up to date before a step reads
them. Pure PyTorch: no file I/O, no MLflow.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn


class TrainingRows(NamedTuple):
    """The training matrix's rows as torch CSR parts, to gather the histories of a batch's readers."""

    indptr: torch.Tensor  # (n_users + 1,)
    indices: torch.Tensor  # (nnz,) item of each interaction, by user
    counts: torch.Tensor  # (n_users,) row lengths

    @classmethod
    def of_matrix(cls, matrix: sp.csr_matrix) -> TrainingRows:
        matrix = matrix.tocsr()
        indptr = torch.from_numpy(matrix.indptr.astype(np.int64))
        return cls(indptr, torch.from_numpy(matrix.indices.astype(np.int64)), indptr[1:] - indptr[:-1])

    def of(
        self, users: torch.Tensor, most: int = 0, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The flat items and bag offsets of `users`' rows, for `F.embedding_bag`, and each bag's
        weight. With `most` > 0 a row longer than that gives a sample of `most` of its items: a cyclic
        window from a random start (drawn from `generator`), so each item is in it with probability
        most / length, and the bag's weight length / most keeps its sum unbiased (1 for whole rows)."""
        full = self.counts[users]
        lengths = full if most <= 0 else full.clamp(max=most)
        offsets = torch.cumsum(lengths, 0) - lengths
        # rank of each gathered entry within its row: a window of `lengths` from the row's start
        rank = torch.arange(int(lengths.sum()), device=full.device) - torch.repeat_interleave(
            offsets, lengths
        )
        if most > 0:
            start = (torch.rand(len(users), generator=generator) * full.cpu()).long().to(full.device)
            rank = (rank + torch.repeat_interleave(start, lengths)) % torch.repeat_interleave(full, lengths)
        items = self.indices[torch.repeat_interleave(self.indptr[users], lengths) + rank]
        return items, offsets, full / lengths.clamp(min=1)

    def to(self, device: torch.device | str) -> TrainingRows:
        return TrainingRows(*(part.to(device) for part in self))


# Callbacks run on a table's rows before a training step reads them: an optimizer that defers the
# updates of untouched rows (`optim.DeferredAdam`) brings them up to date here, so that every read
# sees the weights that updating every row at every step would have given.
# Keyed by the table's id (tensors compare element-wise, so they cannot be dictionary keys); an entry
# goes when its table does.
_BEFORE_READ: dict[int, Callable[[torch.Tensor], None]] = {}


def before_training_reads(weight: torch.Tensor, callback: Callable[[torch.Tensor], None] | None) -> None:
    """Run `callback(rows)` whenever a training step reads `rows` of `weight` (None: no longer)."""
    if callback is None:
        _BEFORE_READ.pop(id(weight), None)
        return
    if id(weight) not in _BEFORE_READ:
        weakref.finalize(weight, _BEFORE_READ.pop, id(weight), None)
    _BEFORE_READ[id(weight)] = callback


class _DistinctRows(torch.autograd.Function):
    """`weight[rows]` for sorted, distinct `rows`; its gradient is the sparse (rows, grad) pair, built
    coalesced as it is (an embedding's own sparse gradient is marked uncoalesced and sorted again)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows)
        ctx.shape = weight.shape
        if (callback := _BEFORE_READ.get(id(weight))) is not None:
            callback(rows)
        return weight.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (rows,) = ctx.saved_tensors
        sparse = torch.sparse_coo_tensor(
            rows.unsqueeze(0), grad, ctx.shape, is_coalesced=True, check_invariants=False
        )
        return sparse, None


def distinct_rows(table: nn.Embedding, rows: torch.Tensor) -> torch.Tensor:
    """The rows of `table` at sorted, distinct `rows` (torch.unique's output), with a sparse gradient
    of one row each."""
    return _DistinctRows.apply(table.weight, rows)


class Distinct(NamedTuple):
    """Ids as their sorted distinct values and each id's place among them (None: the ids are the
    distinct values themselves, as a step's books are)."""

    values: torch.Tensor
    position: torch.Tensor | None

    @classmethod
    def of(cls, ids: torch.Tensor) -> Distinct:
        distinct, position = torch.unique(ids, return_inverse=True)
        return cls(distinct, None if torch.equal(distinct, ids) else position)

    def places(self) -> torch.Tensor:
        return (
            torch.arange(len(self.values), device=self.values.device)
            if self.position is None
            else self.position
        )


class TowerKeys(NamedTuple):
    """The distinct ids of a tower's lookups (its own ids and each side-feature column), found once per
    step and shared by the GMF and MLP towers: each table is read, and gets a gradient, once per
    distinct row (a step's lookups repeat rows by the hundred thousand)."""

    ids: Distinct
    features: tuple[Distinct, ...]

    @classmethod
    def of(cls, ids: torch.Tensor, features: torch.Tensor | None) -> TowerKeys:
        columns = () if features is None else tuple(Distinct.of(c) for c in features.unbind(-1))
        return cls(Distinct.of(ids), columns)


def gathered(table: nn.Embedding, key: Distinct) -> torch.Tensor:
    rows = distinct_rows(table, key.values)
    return rows if key.position is None else rows[key.position]
