"""The one ranking path (pure): scores, one exclusion matrix and the list rules in, the top K out.

Every list bookrec makes goes through `Ranker.top_k`, over every item's scores or, with two-stage
retrieval (`pipeline.model.retrieval`), over each reader's own candidates: validation during training, the choice of the
neighbourhood weight, `bookrec evaluate`, the gate's re-measurement, the MLflow pyfunc, the API and
the dashboard, for recommendations and for similar books alike. So what is measured offline is what
is served.

Rules, applied greedily in score order, so the list is the best one that obeys them:
- excluded items (a row of the exclusion matrix) never appear;
- at most one edition of a work (`one_per_work`);
- at most `max_per_author` books by one author (None: no cap; unknown authors are never capped).
A list is shorter than K only when fewer than K eligible items remain. (The two rules commute because
every edition of a work has the work's author: the catalog's work key includes the author.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from pipeline.data.catalog import Catalog

SMALL_ROWS = 1024  # rows up to this long are sorted whole
# Readers x catalog scores one ranking batch holds (128 MiB of float32): Book-Crossing's 512 x 35,469
# fits, and on a larger catalog a batch holds fewer readers. A batch's few working copies, in every
# forked ranking process, are what an evaluation holds beyond the model.
SCORES_PER_BATCH = 1 << 25


def bounded_batch(batch_size: int, n_items: int) -> int:
    """`batch_size` readers, or fewer so that a batch holds at most SCORES_PER_BATCH scores."""
    return max(1, min(batch_size, SCORES_PER_BATCH // max(n_items, 1)))


def best_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """The `k` best columns of each row (k < columns), unordered. Where the k-th best value is tied
    beyond the k, the tied columns of lowest index are taken, so ties keep column order whoever
    partitions. torch's partial sort (`topk`) takes about half the time of numpy's `argpartition`
    here; it takes k + 1 columns, so that a tie across the k-th place shows as the two smallest of
    them being equal, without another pass over the row."""
    import torch  # here, not at import: the dashboard draws its first page before torch is loaded

    values, columns = torch.topk(torch.from_numpy(np.ascontiguousarray(scores)), k + 1, dim=1, sorted=False)
    smallest = torch.topk(values, 2, dim=1, largest=False)  # the (k+1)-th value, then the k-th
    keep = torch.ones_like(values, dtype=torch.bool)
    keep[torch.arange(len(values)), smallest.indices[:, 0]] = False
    best = columns[keep].reshape(len(values), k).numpy()
    straddling = (smallest.values[:, 0] == smallest.values[:, 1]).numpy()
    for row in np.flatnonzero(straddling):
        line, value = scores[row], smallest.values[row, 1].item()
        above = np.flatnonzero(line > value)
        best[row] = np.concatenate([above, np.flatnonzero(line == value)[: k - len(above)]])
    return best


def plain_top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best `k` columns of each row, best first, by partial sort; -inf entries never make the list
    (they come back as index -1). Ties keep column order."""
    n_rows, n_cols = scores.shape
    k_eff = min(k, n_cols)
    if k_eff < n_cols and n_cols > SMALL_ROWS:
        candidates = best_columns(scores, k_eff)
    elif (
        k_eff < n_cols
    ):  # a few hundred candidates (standing lists): a stable sort costs less than torch's call
        candidates = np.argsort(-scores, axis=1, kind="stable")[:, :k_eff]
    else:
        candidates = np.broadcast_to(np.arange(n_cols), (n_rows, n_cols))
    candidate_scores = np.take_along_axis(scores, candidates, axis=1)
    order = np.lexsort((candidates, -candidate_scores), axis=1)
    ids = np.take_along_axis(candidates, order, axis=1).astype(np.int64)
    best = np.take_along_axis(candidate_scores, order, axis=1)
    ids[~np.isfinite(best) & (best < 0)] = -1
    if k_eff < k:
        ids = np.pad(ids, ((0, 0), (0, k - k_eff)), constant_values=-1)
        best = np.pad(best, ((0, 0), (0, k - k_eff)), constant_values=-np.inf)
    return ids, best.astype(np.float32)


def mask(scores: np.ndarray, excluded: sp.csr_matrix) -> np.ndarray:
    """Set the excluded entries of `scores` (rows aligned with `excluded`) to -inf, in place."""
    rows = np.repeat(np.arange(excluded.shape[0]), np.diff(excluded.indptr))
    scores[rows, excluded.indices] = -np.inf
    return scores


def mask_candidates(scores: np.ndarray, items: np.ndarray, excluded: sp.csr_matrix) -> np.ndarray:
    """Set to -inf, in place, the entries of `scores` (B, C) whose item in `items` (B, C) is excluded
    in that row of `excluded` (B, n_items)."""
    excluded = excluded.tocsr()
    n_items = excluded.shape[1]
    rows = np.repeat(np.arange(excluded.shape[0], dtype=np.int64), np.diff(excluded.indptr))
    keys = np.arange(len(items), dtype=np.int64)[:, None] * n_items + items
    scores[np.isin(keys, rows * n_items + excluded.indices) & (items >= 0)] = -np.inf
    return scores


def _items_at(items: np.ndarray, columns: np.ndarray) -> np.ndarray:
    return np.where(columns >= 0, np.take_along_axis(items, columns.clip(min=0), axis=1), -1)


@dataclass(frozen=True)
class ListRules:
    one_per_work: bool = True
    max_per_author: int | None = None  # None: no cap

    def __post_init__(self) -> None:
        if self.max_per_author is not None and self.max_per_author < 1:
            raise ValueError(
                f"max_per_author must be at least 1 (or None for no cap), not {self.max_per_author}"
            )

    @property
    def active(self) -> bool:
        return self.one_per_work or self.max_per_author is not None


SERVING_DEFAULT = ListRules()  # one edition per work, no author cap


def _first_in_group(rows: np.ndarray, keys: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Rank (0, 1, ...) of each element within its (row, key) group, in position order."""
    order = np.lexsort((positions, keys, rows))
    sorted_rows, sorted_keys = rows[order], keys[order]
    starts = np.r_[True, (sorted_rows[1:] != sorted_rows[:-1]) | (sorted_keys[1:] != sorted_keys[:-1])]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - group_start
    return rank


class Ranker:
    """Top-K lists under the catalog's rules. Cheap to build; holds no per-reader state."""

    def __init__(self, catalog: Catalog, rules: ListRules = SERVING_DEFAULT):
        self.catalog = catalog
        self.rules = rules

    @classmethod
    def plain(cls, n_items: int) -> Ranker:
        """Exclusions only: every item its own work, no author cap."""
        return cls(Catalog.of_distinct_items(n_items), ListRules(one_per_work=False))

    def with_rules(self, **changes) -> Ranker:
        return Ranker(self.catalog, replace(self.rules, **changes))

    def top_k(
        self, scores: np.ndarray, excluded: sp.csr_matrix | None, k: int, items: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(B, k) item indices (-1 pads) and scores. `scores` (B, n_items) is masked in place; or, with
        `items` (B, C: each row's own candidate items, -1 pads), `scores` are those items' (B, C)."""
        if items is None:
            if excluded is not None:
                mask(scores, excluded.tocsr())
            return self._columns(scores, k, None)
        scores[items < 0] = -np.inf
        if excluded is not None:
            mask_candidates(scores, items, excluded)
        ids, best = self._columns(scores, k, items)
        return _items_at(items, ids), best

    def _columns(self, scores: np.ndarray, k: int, items: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The best K columns of `scores` under the rules; a column is the item itself, or its `items` entry."""
        if not self.rules.active:
            return plain_top_k(scores, k)
        ids = np.full((len(scores), k), -1, dtype=np.int64)
        best = np.full((len(scores), k), -np.inf, dtype=np.float32)
        rows = np.arange(len(scores))
        depth = min(scores.shape[1], 4 * k + 16)
        while len(rows):
            remaining = scores if len(rows) == len(scores) else scores[rows]  # no copy on the first pass
            candidates, candidate_scores = plain_top_k(remaining, depth)
            kept = self._eligible(candidates if items is None else _items_at(items[rows], candidates))
            picked = np.cumsum(kept, axis=1)
            complete = (picked[:, -1] >= k) | (depth >= scores.shape[1]) | (candidates[:, -1] < 0)
            row, column = np.nonzero(kept & (picked <= k) & complete[:, None])
            slot = picked[row, column] - 1
            ids[rows[row], slot] = candidates[row, column]
            best[rows[row], slot] = candidate_scores[row, column]
            rows = rows[~complete]  # the rest had too few eligible items so deep: look deeper
            depth = min(scores.shape[1], depth * 4)
        return ids, best

    def _eligible(self, candidates: np.ndarray) -> np.ndarray:
        """(B, depth) bool: which candidates (best first) the greedy rules keep."""
        n_rows, depth = candidates.shape
        valid = candidates >= 0
        rows = np.repeat(np.arange(n_rows), depth)
        positions = np.tile(np.arange(depth), n_rows)
        flat = candidates.ravel()
        unique = -1 - np.arange(flat.size)  # a key no other element shares
        kept = valid.ravel()
        if self.rules.one_per_work:
            works = np.where(kept, self.catalog.work[flat.clip(min=0)], unique)
            kept &= _first_in_group(rows, works, positions) == 0
        if self.rules.max_per_author is not None:
            authors = self.catalog.author[flat.clip(min=0)]
            authors = np.where(kept & (authors >= 0), authors, unique)
            kept &= _first_in_group(rows, authors, positions) < self.rules.max_per_author
        return kept.reshape(n_rows, depth)
