"""Two-stage retrieval (pure): candidates first, then the exact NCF + neighbourhood blend on them only.

Full ranking scores every book for every request, so its cost grows with the catalog. Here the first
stage takes each reader's candidates from
- an HNSW index (hnswlib) over the model's item vectors: the GMF part of the score with the item bias
  as one more coordinate, so that the reader's GMF vector with a 1 appended finds the books of highest
  GMF score + bias (maximum inner product search, about log N);
- the ItemKNN neighbours of the reader's books (the neighbourhood term's non-zeros, the best of them);
and the second stage scores exactly those (`NCF.score_candidates`: the MLP part and the bias
included) and blends them as full ranking does. The blend standardises the NCF scores per reader over
the catalog: their mean and spread are estimated from a fixed sample of books (exact when the sample
is the catalog); the neighbourhood term's are exact, as they come from its non-zeros.

Below `min_catalog` books, or with `candidates` 0 or at least the catalog, nothing changes: full
ranking is cheap there and exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from pipeline.model.ncf import CandidateRows, ItemCache


@dataclass(frozen=True)
class RetrievalSettings:
    candidates: int = 0  # books from the index per reader (plus as many as the reader has excluded)
    min_catalog: int = 100_000  # full ranking below this many books
    neighbours: int = 0  # best ItemKNN neighbours added per reader; 0: as many as `candidates`
    sample: int = 4096  # books whose NCF scores estimate each reader's mean and spread

    @classmethod
    def from_json(cls, data: dict | None) -> RetrievalSettings:
        return cls(**data) if data else cls()

    def applies(self, n_items: int, forced: bool = False) -> bool:
        return 0 < self.candidates < n_items and (forced or n_items >= self.min_catalog)


class CandidateIndex:
    """The index and the items-major copies of the item-side terms that two-stage retrieval reads."""

    def __init__(self, cache: ItemCache, settings: RetrievalSettings, threads: int = 1, seed: int = 0):
        import hnswlib

        self.settings = settings
        self.dim, self.n_items = cache.gmf_weighted.shape
        # items-major, so that a candidate's terms are one contiguous row: GMF vector, then bias
        self.table = torch.cat([cache.gmf_weighted.T, cache.bias.unsqueeze(1)], dim=1)  # (N, d + 1)
        self.mlp_first = cache.mlp_first.T.contiguous()  # (N, h1)
        self.index = hnswlib.Index(space="ip", dim=self.dim + 1)
        self.index.init_index(max_elements=self.n_items, ef_construction=100, M=16, random_seed=seed)
        # one thread by default: the graph, hence the candidates, are then the same at every load
        self.index.add_items(self.table.numpy(), np.arange(self.n_items), num_threads=threads)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(self.n_items, min(settings.sample, self.n_items), replace=False))
        self.sample_cache = ItemCache(
            cache.gmf_weighted[:, sample].contiguous(),
            cache.mlp_first[:, sample].contiguous(),
            cache.bias[sample],
        )

    def candidates(self, user_gmf: torch.Tensor, neighbours: sp.csr_matrix | None, extra: int) -> np.ndarray:
        """(B, C) each reader's candidate items, ascending, -1 pads: the index's best
        `candidates + extra` (extra: room for the reader's excluded books) and the best neighbours."""
        rows = list(self._nearest(user_gmf, self.settings.candidates + extra))
        if neighbours is not None:
            best = self.settings.neighbours or self.settings.candidates
            rows = [np.union1d(row, _best_columns(neighbours, b, best)) for b, row in enumerate(rows)]
        width = max(len(row) for row in rows)
        out = np.full((len(rows), width), -1, dtype=np.int64)
        for b, row in enumerate(rows):
            out[b, : len(row)] = np.sort(row)
        return out

    def _nearest(self, user_gmf: torch.Tensor, k: int) -> np.ndarray:
        if k >= self.n_items:  # every book (HNSW need not reach all of a graph)
            return np.broadcast_to(np.arange(self.n_items), (len(user_gmf), self.n_items))
        self.index.set_ef(k)  # hnswlib needs a search depth of at least k
        query = torch.cat([user_gmf, torch.ones(len(user_gmf), 1)], dim=1).numpy()
        return self.index.knn_query(query, k=k, num_threads=1)[0].astype(np.int64)

    def rows(self, items: np.ndarray) -> CandidateRows:
        """The item-side terms at `items` (B, C); pads read item 0 (their scores are set to -inf)."""
        at = torch.as_tensor(items).clamp(min=0).view(-1)
        terms = self.table.index_select(0, at).view(*items.shape, self.dim + 1)  # half of terms[at]'s cost
        mlp_first = self.mlp_first.index_select(0, at).view(*items.shape, -1)
        return CandidateRows(terms[..., : self.dim], mlp_first, terms[..., self.dim])


def _best_columns(matrix: sp.csr_matrix, row: int, count: int) -> np.ndarray:
    start, end = matrix.indptr[row], matrix.indptr[row + 1]
    columns, values = matrix.indices[start:end], matrix.data[start:end]
    if len(columns) > count:
        columns = columns[np.argpartition(-values, count - 1)[:count]]
    return columns.astype(np.int64)
