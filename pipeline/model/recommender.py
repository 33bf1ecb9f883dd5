"""The recommender interface every model and baseline implements (in the style of `implicit`), and the
trained NCF behind it.

A recommender scores every item for a batch of users (`score_users`); `recommend` and
`similar_items` hand those scores to the one ranking path (`pipeline.ranking.Ranker`), which applies
the exclusions and the list rules and takes the top K.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch

from pipeline.model.ncf import NCF, ItemCache
from pipeline.model.neighbourhood import Neighbourhood, row_moments
from pipeline.model.retrieval import CandidateIndex, RetrievalSettings
from pipeline.ranking import Ranker

if TYPE_CHECKING:
    import hnswlib


def one_hot_rows(items: np.ndarray, n_items: int) -> sp.csr_matrix:
    """(len(items), n_items) with a single 1 per row, at that row's item."""
    items = np.asarray(items, dtype=np.int64)
    return sp.csr_matrix(
        (np.ones(len(items), dtype=np.float32), (np.arange(len(items)), items)), shape=(len(items), n_items)
    )


def most_excluded(rows: sp.csr_matrix | None) -> int:
    """The largest number of excluded items in one row (0 for no exclusion)."""
    return int(np.diff(rows.indptr).max(initial=0)) if rows is not None else 0


def ann_index(vectors: np.ndarray) -> hnswlib.Index:
    """An HNSW index (hnswlib) over unit vectors: inner product is cosine similarity."""
    import hnswlib

    index = hnswlib.Index(space="ip", dim=vectors.shape[1])
    index.init_index(max_elements=len(vectors), ef_construction=200, M=16, random_seed=42)
    index.add_items(vectors, np.arange(len(vectors)), num_threads=1)
    index.set_ef(200)
    return index


class ItemSimilarity:
    """Cosine similarity of item vectors: exact, or from an HNSW index once the catalog has more than
    `ann_threshold` items (then only the index's nearest candidates get a finite score).

    The index is built at its first use (or by `build_index`), not with the vectors: ranking for
    readers (the gate, evaluation) never asks for similar books, and at a large catalog the index
    costs minutes to build."""

    def __init__(self, vectors: np.ndarray, ann_threshold: int | None = None):
        norms = np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        self.unit = (vectors / norms).astype(np.float32)
        self.approximate = ann_threshold is not None and len(vectors) > ann_threshold
        self._index: hnswlib.Index | None = None
        self._building = threading.Lock()  # two first requests build one index

    @property
    def built(self) -> bool:
        return self._index is not None

    def build_index(self) -> ItemSimilarity:
        """Build the index now if this catalog calls for one (a no-op for exact search)."""
        _ = self.index
        return self

    @property
    def index(self) -> hnswlib.Index | None:
        """The HNSW index (None for exact search), built here the first time it is asked for."""
        if self.approximate and self._index is None:
            with self._building:
                if self._index is None:
                    self._index = ann_index(self.unit)
        return self._index

    def scores(self, queries: np.ndarray, depth: int) -> np.ndarray:
        """(len(queries), n_items) similarities; with an index, -inf outside the `depth` nearest."""
        queries = np.asarray(queries, dtype=np.int64)
        index = self.index
        if index is None:
            return self.unit[queries] @ self.unit.T
        labels, distances = index.knn_query(self.unit[queries], k=min(depth, len(self.unit)))
        scores = np.full((len(queries), len(self.unit)), -np.inf, dtype=np.float32)
        np.put_along_axis(scores, labels.astype(np.int64), (1.0 - distances).astype(np.float32), axis=1)
        return scores

    def to(self, target: int, items: np.ndarray) -> np.ndarray:
        """Similarities of `items` to one `target` item."""
        return self.unit[np.asarray(items, dtype=np.int64)] @ self.unit[int(target)]


class Recommender(ABC):
    """Batch-first recommender over dense user and item indices."""

    name: str = "recommender"
    seen: sp.csr_matrix | None = None  # what filter_seen leaves out by default: the training matrix
    _similarity: ItemSimilarity | None = None

    @abstractmethod
    def fit(self, train: sp.csr_matrix) -> Recommender: ...

    @abstractmethod
    def score_users(self, users: np.ndarray) -> np.ndarray:
        """(len(users) x n_items) float32 scores; higher is better."""

    def item_vectors(self) -> np.ndarray | None:
        """Dense item representations for `similar_items`, if the model has them."""
        return None

    def recommend(
        self,
        users: np.ndarray,
        k: int = 10,
        filter_seen: bool = True,
        exclude: sp.csr_matrix | None = None,
        ranker: Ranker | None = None,
        batch_size: int = 2048,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices and scores per user (-1 pads); `exclude` (users x items) replaces `seen`
        as what is filtered; `ranker` brings the list rules (default: exclusions only)."""
        users = np.asarray(users, dtype=np.int64)
        excluded = (exclude if exclude is not None else self.seen) if filter_seen else None
        ids = np.empty((len(users), k), dtype=np.int64)
        scores = np.empty((len(users), k), dtype=np.float32)
        for start in range(0, len(users), batch_size):
            batch = users[start : start + batch_size]
            rows = excluded[batch] if excluded is not None else None
            batch_scores, items = self.candidate_scores(batch, most_excluded(rows))
            # a plain ranker indexes its catalog by item: with candidates, up to the largest one
            size = batch_scores.shape[1] if items is None else int(items.max(initial=0)) + 1
            batch_ranker = ranker or Ranker.plain(size)
            ids[start : start + len(batch)], scores[start : start + len(batch)] = batch_ranker.top_k(
                batch_scores, rows, k, items
            )
        return ids, scores

    def candidate_scores(self, users: np.ndarray, extra: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The scores to rank: every item's (items None) or, for a model with two-stage retrieval, each
        reader's candidates' (items: their indices, B x C, -1 pads); `extra`: how many of a reader's
        items may be excluded at most. A writable copy."""
        # C order: a copy of a broadcast row (popularity) would otherwise come out column-major, and
        # every later pass over the rows (masking, the partial sort) would copy or stride across it
        return np.array(self.score_users(users), dtype=np.float32, order="C", copy=True), None

    def similarity(self, ann_threshold: int | None = None) -> ItemSimilarity:
        if self._similarity is None:
            vectors = self.item_vectors()
            if vectors is None:
                raise NotImplementedError(f"{self.name} has no item vectors")
            self._similarity = ItemSimilarity(vectors, ann_threshold)
        return self._similarity

    def similar_items(
        self, items: np.ndarray, k: int = 10, ranker: Ranker | None = None, blocked: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by cosine similarity of item vectors; never the item itself, nor (with a
        catalog-aware `ranker`) another edition of it, nor a `blocked` item (indices, for every row)."""
        similarity = self.similarity()
        n_items = len(similarity.unit)
        ranker = ranker or Ranker.plain(n_items)
        blocked = np.empty(0, np.int64) if blocked is None else np.asarray(blocked, dtype=np.int64)
        scores = similarity.scores(items, depth=8 * k + 32 + len(blocked))
        excluded = ranker.catalog.with_editions(one_hot_rows(items, n_items))
        if len(blocked):
            rows = np.repeat(np.arange(len(items)), len(blocked))
            block = sp.csr_matrix(
                (np.ones(len(rows), np.float32), (rows, np.tile(blocked, len(items)))), shape=excluded.shape
            )
            excluded = excluded + block
        return ranker.top_k(scores, excluded, k)


class NCFRecommender(Recommender):
    """A trained NCF behind the recommender interface.

    `history` (users x items) is what the user representation is built from: the train split during
    evaluation, everything the reader is known to have read when serving; `seen` is what is excluded
    by default. With a `neighbourhood`, the NCF scores are blended with its item-item term.
    """

    name = "ncf"

    def __init__(
        self,
        model: NCF,
        user_features: torch.Tensor,  # (n_users + 1, f) long; the last row is the unknown reader
        item_features: torch.Tensor,  # (n_items + 1, f) long
        history: sp.csr_matrix,
        seen: sp.csr_matrix | None = None,
        neighbourhood: Neighbourhood | None = None,
        retrieval: RetrievalSettings | None = None,
        two_stage: bool | None = None,  # None: by catalog size (`RetrievalSettings.min_catalog`)
    ):
        self.model = model
        self.neighbourhood = neighbourhood
        self.retrieval = retrieval or RetrievalSettings()
        applies = self.retrieval.applies(model.config.n_items, forced=bool(two_stage))
        self.two_stage = applies and two_stage is not False
        self._index: CandidateIndex | None = None
        self._index_owner: NCFRecommender = self  # whose candidate index this one reads (shared)
        self._building = threading.Lock()
        self.user_features = user_features
        self.item_features = item_features
        self.history = history.tocsr()
        self.seen = (seen if seen is not None else history).tocsr()
        self._cache = None

    def fit(self, train: sp.csr_matrix) -> NCFRecommender:
        raise NotImplementedError("NCF is trained by pipeline.model.train.fit")

    def item_cache(self) -> ItemCache:
        if self._cache is None:
            self._cache = self.model.item_cache(self.item_features[: self.model.config.n_items])
        return self._cache

    def candidate_index(self) -> CandidateIndex:
        """Two-stage retrieval's index, built at its first use (minutes at a large catalog: a consumer
        that ranks in full, as the gate does, never pays for it)."""
        if self._index_owner is not self:
            return self._index_owner.candidate_index()
        if self._index is None:
            with self._building:
                if self._index is None:
                    self._index = CandidateIndex(self.item_cache(), self.retrieval)
        return self._index

    @property
    def has_candidate_index(self) -> bool:
        return self._index_owner._index is not None

    def share_item_cache(self, other: NCFRecommender) -> NCFRecommender:
        """Use `other`'s item-side cache and candidate index (same weights): one copy in memory."""
        self._cache = other.item_cache()
        if self.two_stage and other.two_stage and self.retrieval == other.retrieval:
            self._index_owner = other
        return self

    def _user_vectors(self, user_rows: np.ndarray, features: torch.Tensor, history_rows: sp.csr_matrix):
        device = self.model.device
        users = torch.as_tensor(np.asarray(user_rows), dtype=torch.long, device=device)
        return self.model.user_vectors(users, features.to(device), self.model.history_terms(history_rows))

    def score_rows(
        self, user_rows: np.ndarray, features: torch.Tensor, history_rows: sp.csr_matrix
    ) -> np.ndarray:
        """(B, n_items) scores for readers given as model rows (n_users = unknown reader), their
        side-feature ids and their histories (binary CSR rows): every full-ranking NCF score comes from here."""
        with torch.inference_mode():
            vectors = self._user_vectors(user_rows, features, history_rows)
            scores = self.model.score_all_items(vectors, self.item_cache()).cpu().numpy()
        return self.neighbourhood.blend(scores, history_rows) if self.neighbourhood is not None else scores

    def scored_rows(
        self, user_rows: np.ndarray, features: torch.Tensor, history_rows: sp.csr_matrix, extra: int = 0
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """What to rank for these readers (see `candidate_scores`): `score_rows`, or with two-stage
        retrieval the exact blend at each reader's candidates."""
        if not self.two_stage:
            return self.score_rows(user_rows, features, history_rows), None
        index = self.candidate_index()
        blend = self.neighbourhood is not None and self.neighbourhood.weight != 0
        neighbours = self.neighbourhood.scores(history_rows) if blend else None
        with torch.inference_mode():
            vectors = self._user_vectors(user_rows, features, history_rows)
            items = index.candidates(vectors.gmf, neighbours, extra)
            scores = self.model.score_candidates(vectors, index.rows(items)).numpy()
            if blend:
                sample = self.model.score_all_items(vectors, index.sample_cache).numpy()
                scores = self.neighbourhood.blend_candidates(scores, row_moments(sample), neighbours, items)
        return scores, items

    def score_users(self, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        return self.score_rows(users, self.user_features[users], self.history[users])

    def candidate_scores(self, users: np.ndarray, extra: int) -> tuple[np.ndarray, np.ndarray | None]:
        users = np.asarray(users, dtype=np.int64)
        return self.scored_rows(users, self.user_features[users], self.history[users], extra)

    def item_vectors(self) -> np.ndarray:
        """The GMF item vectors (id and side features) next to the MLP tower's, each normalised."""
        with torch.inference_mode():
            n = self.model.config.n_items
            items = torch.arange(n, device=self.model.device)
            vectors = self.model.item_vectors(items, self.item_features[:n].to(self.model.device))
            gmf = torch.nn.functional.normalize(vectors.gmf, dim=1)
            mlp = torch.nn.functional.normalize(vectors.mlp, dim=1)
            return torch.cat([gmf, mlp], dim=1).cpu().numpy()
