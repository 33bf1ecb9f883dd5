"""The recommender interface every model and baseline implements (in the style of `implicit`).

A recommender scores all items for a batch of users; `recommend` masks what the user has already
read and takes the top K with a partial sort; `similar_items` ranks items by the cosine similarity
of the model's item vectors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best `k` columns of each row, best first, by partial sort; -inf entries never make the list
    (they come back as index -1)."""
    n_rows, n_cols = scores.shape
    k_eff = min(k, n_cols)
    if k_eff < n_cols:
        candidates = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    else:
        candidates = np.broadcast_to(np.arange(n_cols), (n_rows, n_cols))
    candidate_scores = np.take_along_axis(scores, candidates, axis=1)
    order = np.argsort(-candidate_scores, axis=1, kind="stable")
    ids = np.take_along_axis(candidates, order, axis=1).astype(np.int64)
    best = np.take_along_axis(candidate_scores, order, axis=1)
    ids[~np.isfinite(best) & (best < 0)] = -1
    if k_eff < k:
        ids = np.pad(ids, ((0, 0), (0, k - k_eff)), constant_values=-1)
        best = np.pad(best, ((0, 0), (0, k - k_eff)), constant_values=-np.inf)
    return ids, best.astype(np.float32)


def mask_rows(scores: np.ndarray, users: np.ndarray, exclude: sp.csr_matrix) -> np.ndarray:
    """Set the excluded (user, item) scores of a batch to -inf, in place."""
    rows = exclude[users]
    batch_rows = np.repeat(np.arange(len(users)), np.diff(rows.indptr))
    scores[batch_rows, rows.indices] = -np.inf
    return scores


def standardise_rows(scores: np.ndarray) -> np.ndarray:
    """Each row shifted to mean 0 and scaled to standard deviation 1 (a constant row becomes all zeros)."""
    centred = scores - scores.mean(axis=1, keepdims=True)
    spread = centred.std(axis=1, keepdims=True)
    return np.divide(centred, spread, out=np.zeros_like(centred), where=spread > 0)


@dataclass(frozen=True)
class Neighbourhood:
    """An item-item neighbourhood term next to a learned model (Koren 2008, "Factorization meets the
    neighborhood"): score = z(model) + weight * z(sum of similarities of each book to the reader's books),
    both standardised per reader so that one weight fits readers with short and long histories.

    The similarities are BM25-weighted ItemKNN fitted on the training split; the weight is chosen on
    validation. A reader with no history gets a constant neighbourhood row, so only the model ranks.
    """

    similarity: sp.csr_matrix  # (n_items, n_items), row j: the books similar to book j
    weight: float

    def scores(self, history_rows: sp.csr_matrix) -> sp.csr_matrix:
        """(B, n_items) sums of similarities to the books of each history row; sparse, as most are 0."""
        return (history_rows @ self.similarity).tocsr()

    def blend(self, model_scores: np.ndarray, history_rows: sp.csr_matrix) -> np.ndarray:
        if self.weight == 0:
            return model_scores
        neighbours = self.scores(history_rows)
        # z(neighbours) without densifying: its row mean and spread come from the non-zeros alone.
        n_items = model_scores.shape[1]
        mean = np.asarray(neighbours.sum(axis=1), dtype=np.float64).ravel() / n_items
        squares = np.asarray(neighbours.multiply(neighbours).sum(axis=1), dtype=np.float64).ravel()
        spread = np.sqrt(np.maximum(squares / n_items - mean**2, 0.0))
        scale = np.divide(self.weight, spread, out=np.zeros_like(spread), where=spread > 0)
        blended = standardise_rows(model_scores)
        blended -= (scale * mean).astype(np.float32)[:, None]
        rows = np.repeat(np.arange(neighbours.shape[0]), np.diff(neighbours.indptr))
        blended[rows, neighbours.indices] += (scale[rows] * neighbours.data).astype(np.float32)
        return blended


def history_rows(histories: list, n_items: int) -> sp.csr_matrix:
    """A binary (len(histories), n_items) matrix from lists of item indices."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = np.concatenate(histories).astype(np.int64) if len(histories) else np.empty(0, np.int64)
    return sp.csr_matrix(
        (np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(histories), n_items)
    )


class Recommender(ABC):
    """Batch-first recommender over dense user and item indices."""

    name: str = "recommender"
    seen: sp.csr_matrix | None = None  # what filter_seen leaves out by default: the training matrix

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
        batch_size: int = 2048,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices and scores per user; `exclude` replaces `seen` as what is filtered."""
        users = np.asarray(users, dtype=np.int64)
        mask = (exclude if exclude is not None else self.seen) if filter_seen else None
        ids = np.empty((len(users), k), dtype=np.int64)
        scores = np.empty((len(users), k), dtype=np.float32)
        for start in range(0, len(users), batch_size):
            batch = users[start : start + batch_size]
            batch_scores = np.array(self.score_users(batch), dtype=np.float32, copy=True)
            if mask is not None:
                mask_rows(batch_scores, batch, mask)
            ids[start : start + len(batch)], scores[start : start + len(batch)] = top_k(batch_scores, k)
        return ids, scores

    def similar_items(self, items: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by cosine similarity of item vectors; an item is never its own neighbour."""
        vectors = self.item_vectors()
        if vectors is None:
            raise NotImplementedError(f"{self.name} has no item vectors")
        normalised = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        items = np.asarray(items, dtype=np.int64)
        similarity = normalised[items] @ normalised.T
        similarity[np.arange(len(items)), items] = -np.inf
        return top_k(similarity, k)


class NCFRecommender(Recommender):
    """A trained NCF behind the recommender interface.

    `history` (users x items) is what the user representation is built from: the train split during
    evaluation, everything the reader is known to have read when serving. With a `neighbourhood`, the
    NCF scores are blended with its item-item term (see `Neighbourhood`).
    """

    name = "ncf"

    def __init__(
        self,
        model,
        user_features,
        item_features,
        history: sp.csr_matrix,
        seen: sp.csr_matrix | None = None,
        neighbourhood: Neighbourhood | None = None,
    ):
        self.model = model
        self.neighbourhood = neighbourhood
        self.user_features = user_features  # torch (n_users + 1, f) long
        self.item_features = item_features  # torch (n_items + 1, f) long
        self.history = history.tocsr()
        self.seen = (seen if seen is not None else history).tocsr()
        self._cache = None

    def fit(self, train: sp.csr_matrix) -> NCFRecommender:
        raise NotImplementedError("NCF is trained by pipeline.train.fit")

    def refresh(self) -> NCFRecommender:
        """Recompute the item-side cache (after the weights changed)."""
        self._cache = None
        return self

    def item_cache(self):
        if self._cache is None:
            self._cache = self.model.item_cache(self.item_features[: self.model.config.n_items])
        return self._cache

    def user_vectors_for(self, users: np.ndarray, history_rows: sp.csr_matrix):
        import torch

        from pipeline.model.ncf import history_matrix

        users_t = torch.as_tensor(users, dtype=torch.long)
        terms = None
        if self.model.config.use_history:
            matrix = history_matrix(
                history_rows.indptr,
                history_rows.indices,
                self.model.config.n_items,
                self.model.config.history_alpha,
            )
            terms = self.model.history_terms(matrix)
        return self.model.user_vectors(users_t, self.user_features[users_t], terms)

    def score_users(self, users: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            rows = self.history[users]
            scores = self.model.score_all_items(self.user_vectors_for(users, rows), self.item_cache()).numpy()
        return self.neighbourhood.blend(scores, rows) if self.neighbourhood is not None else scores

    def item_vectors(self) -> np.ndarray:
        """The GMF item vectors (id and side features) next to the MLP tower's, each normalised."""
        import torch

        with torch.inference_mode():
            n = self.model.config.n_items
            vectors = self.model.item_vectors(torch.arange(n), self.item_features[:n])
            gmf = torch.nn.functional.normalize(vectors.gmf, dim=1)
            mlp = torch.nn.functional.normalize(vectors.mlp, dim=1)
            return torch.cat([gmf, mlp], dim=1).numpy()
