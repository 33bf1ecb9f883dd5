"""What a training batch draws: the order of an epoch's positives (one at a time, or in chunks of one
reader's where histories dominate a step) and vectorised negative sampling for BPR, n negatives per
positive, none of them a positive of the user.

A draw costs O(log catalog), never O(catalog): popularity-weighted draws search a cumulative
distribution built once, and the rare reader whose draws keep colliding gets an exact uniform draw
among their non-positives from their own row (O(row) per draw)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch


@dataclass
class SampleStats:
    drawn: int = 0
    first_draw_collisions: int = 0  # negatives that hit a positive before resampling
    left_colliding: int = 0  # still a positive after every resampling round

    @property
    def collision_rate(self) -> float:
        return self.first_draw_collisions / max(self.drawn, 1)


class NegativeSampler:
    """Draws items uniformly, or in proportion to popularity**power, and redraws collisions with the
    user's positives (up to `max_rounds` times; what still collides after that is counted)."""

    def __init__(
        self,
        positives: sp.csr_matrix,
        distribution: str = "uniform",
        power: float = 0.75,
        max_rounds: int = 10,
    ):
        if distribution not in ("uniform", "popularity"):
            raise ValueError(f"distribution must be 'uniform' or 'popularity', not {distribution!r}")
        positives = positives.tocsr()
        self.n_items = positives.shape[1]
        rows = np.repeat(np.arange(positives.shape[0], dtype=np.int64), np.diff(positives.indptr))
        self._positive_keys = torch.from_numpy(
            np.sort(rows * self.n_items + positives.indices.astype(np.int64))
        )
        self.distribution = distribution
        popularity = np.bincount(positives.indices, minlength=self.n_items).astype(np.float64)
        cumulative = np.cumsum((popularity + 1.0) ** power)
        self._cumulative = (
            torch.from_numpy(cumulative / cumulative[-1]) if distribution == "popularity" else None
        )
        self.max_rounds = max_rounds
        self.stats = SampleStats()

    def _draw(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        if self._cumulative is None:
            return torch.randint(0, self.n_items, shape, generator=generator)
        uniform = torch.rand(shape, generator=generator, dtype=torch.float64)
        return torch.searchsorted(self._cumulative, uniform, right=True).clamp_(max=self.n_items - 1)

    def is_positive(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        keys = users * self.n_items + items
        position = torch.searchsorted(self._positive_keys, keys).clamp(max=len(self._positive_keys) - 1)
        return self._positive_keys[position] == keys

    def sample(self, users: torch.Tensor, n_negatives: int, generator: torch.Generator) -> torch.Tensor:
        """(len(users), n_negatives) item indices."""
        users = users.long().unsqueeze(1).expand(-1, n_negatives)
        negatives = self._draw(tuple(users.shape), generator)
        colliding = self.is_positive(users, negatives)
        self.stats.drawn += negatives.numel()
        self.stats.first_draw_collisions += int(colliding.sum())
        for _ in range(self.max_rounds):
            if not colliding.any():
                break
            redraw = self._draw((int(colliding.sum()),), generator)
            negatives[colliding] = redraw
            colliding[colliding.clone()] = self.is_positive(users[colliding], redraw)
        if colliding.any():
            negatives[colliding] = self._draw_outside(users[colliding], generator)
            colliding[colliding.clone()] = self.is_positive(users[colliding], negatives[colliding])
        self.stats.left_colliding += int(colliding.sum())
        return negatives

    def _draw_outside(self, users: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Exact fallback for the rare draws that kept colliding: a uniform draw among each user's
        non-positives, the j-th of them found from the user's sorted positives (no catalog-sized mask)."""
        result = torch.zeros_like(users)
        keys = self._positive_keys
        for row, user in enumerate(users.tolist()):
            start = int(torch.searchsorted(keys, torch.tensor(user * self.n_items)))
            stop = int(torch.searchsorted(keys, torch.tensor((user + 1) * self.n_items)))
            read = keys[start:stop] - user * self.n_items  # sorted
            free = self.n_items - len(read)
            if free <= 0:  # the user read everything: nothing can be a negative
                continue
            j = int(torch.randint(0, free, (1,), generator=generator))
            # the j-th non-positive is j plus the number of positives at or before it
            below = read - torch.arange(len(read))  # non-positives before each positive
            result[row] = j + int(torch.searchsorted(below, torch.tensor(j), right=True))
        return result


def expected_history_entries(users: torch.Tensor, batch_size: int) -> float:
    """History entries a batch of `batch_size` positives drawn one by one reads, in expectation: a
    reader with n of the N positives is in the batch with probability 1 - (1 - n/N)^batch, and then
    their whole history (n books) is read once."""
    counts = torch.bincount(users).double()
    drawn = 1 - torch.pow(1 - counts / max(len(users), 1), min(batch_size, len(users)))
    return float((counts * drawn).sum())


def reader_chunk(users: torch.Tensor, batch_size: int, chunk: int, above: int) -> int:
    """`chunk` (`train.reader_chunk`) where a batch of single positives would read more than `above`
    (`train.reader_chunk_above`; 0: always) history entries, else 0. Why a threshold: chunks cut a
    step's cost where histories dominate it (large data) but change the order SGD sees, which
    Book-Crossing's validation did not ask for (docs/model.md)."""
    if above and expected_history_entries(users, batch_size) <= above:
        return 0
    return chunk


def epoch_order(users: torch.Tensor, chunk: int, generator: torch.Generator) -> torch.Tensor:
    """A permutation of the training positives: shuffled one by one (`chunk` 0 or 1), or each reader's
    positives shuffled and cut into runs of at most `chunk`, the runs shuffled."""
    order = torch.randperm(len(users), generator=generator)
    if chunk <= 1:
        return order
    by_reader = order[torch.argsort(users[order], stable=True)]  # each reader's rows, shuffled
    readers = users[by_reader]
    run_start = torch.ones(len(readers), dtype=torch.bool)
    run_start[1:] = readers[1:] != readers[:-1]
    first = torch.cummax(torch.where(run_start, torch.arange(len(readers)), 0), dim=0).values
    position = torch.arange(len(readers)) - first
    chunk_id = torch.cumsum((position % chunk == 0).long(), dim=0) - 1
    rank = torch.empty(int(chunk_id[-1]) + 1, dtype=torch.long)
    rank[torch.randperm(len(rank), generator=generator)] = torch.arange(len(rank))
    return by_reader[torch.argsort(rank[chunk_id] * chunk + position % chunk)]
