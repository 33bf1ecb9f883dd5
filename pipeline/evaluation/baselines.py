"""Baselines behind the recommender interface: random, popularity, ItemKNN (cosine, BM25) and ALS.

ItemKNN and ALS are fitted by `implicit`, the field's standard implementation; scoring and the
masking of read books go through the same `Recommender.recommend` as every other model.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from pipeline.model.recommender import Recommender


class RandomRecommender(Recommender):
    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, train: sp.csr_matrix) -> RandomRecommender:
        self.seen, self.n_items = train.tocsr(), train.shape[1]
        return self

    def score_users(self, users: np.ndarray) -> np.ndarray:
        # Seeded by the users in the batch, so a user's scores do not depend on how users are batched.
        scores = np.empty((len(users), self.n_items), dtype=np.float32)
        for row, user in enumerate(users):
            scores[row] = np.random.default_rng((self.seed, int(user))).random(self.n_items, dtype=np.float32)
        return scores


class PopularityRecommender(Recommender):
    name = "popularity"

    def fit(self, train: sp.csr_matrix) -> PopularityRecommender:
        self.seen = train.tocsr()
        self.popularity = np.bincount(self.seen.indices, minlength=train.shape[1]).astype(np.float32)
        return self

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.popularity, (len(users), len(self.popularity)))


class ItemKNNRecommender(Recommender):
    """Item-based k-nearest neighbours: score(u, i) = sum of similarities of i to the items u read."""

    def __init__(self, weighting: str = "bm25", neighbours: int = 100, k1: float = 1.2, b: float = 0.75):
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

        self.name = f"itemknn_{weighting}"
        if weighting == "bm25":
            self._model = BM25Recommender(K=neighbours, K1=k1, B=b)
        elif weighting == "cosine":
            self._model = CosineRecommender(K=neighbours)
        else:
            raise ValueError(f"unknown ItemKNN weighting {weighting!r}; use 'bm25' or 'cosine'")

    def fit(self, train: sp.csr_matrix) -> ItemKNNRecommender:
        self.seen = train.tocsr().astype(np.float32)
        with warnings.catch_warnings():
            # implicit converts its own BM25-weighted COO matrix to CSR and warns about it.
            warnings.simplefilter("ignore")
            self._model.fit(self.seen, show_progress=False)
        self.similarity = self._model.similarity.tocsr().astype(np.float32)
        return self

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return (self.seen[users] @ self.similarity).toarray()


class ALSRecommender(Recommender):
    """Implicit-feedback matrix factorisation (Hu, Koren, Volinsky 2008), fitted by `implicit`."""

    name = "als"

    def __init__(
        self,
        factors: int = 256,
        regularization: float = 10.0,
        alpha: float = 20.0,
        iterations: int = 15,
        seed: int = 42,
    ):
        from implicit.cpu.als import AlternatingLeastSquares

        with threadpool_limits(1, "blas"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # implicit's BLAS-threads advice, followed in fit
            self._model = AlternatingLeastSquares(
                factors=factors,
                regularization=regularization,
                alpha=alpha,
                iterations=iterations,
                random_state=seed,
                calculate_training_loss=False,
            )

    def fit(self, train: sp.csr_matrix) -> ALSRecommender:
        self.seen = train.tocsr().astype(np.float32)
        # implicit's BLAS calls are single-threaded by design; it parallelises over users itself.
        with threadpool_limits(1, "blas"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # implicit's BLAS-threads advice, followed above
            self._model.fit(self.seen, show_progress=False)
        self.user_factors = np.asarray(self._model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(self._model.item_factors, dtype=np.float32)
        return self

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return self.user_factors[users] @ self.item_factors.T

    def item_vectors(self) -> np.ndarray:
        return self.item_factors


def make_baseline(name: str, **options) -> Recommender:
    factories = {
        "random": RandomRecommender,
        "popularity": PopularityRecommender,
        "itemknn_bm25": lambda **o: ItemKNNRecommender("bm25", **o),
        "itemknn_bm25_tuned": lambda **o: ItemKNNRecommender("bm25", **o),
        "itemknn_cosine": lambda **o: ItemKNNRecommender("cosine", **o),
        "als": ALSRecommender,
    }
    if name not in factories:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(factories)}")
    return factories[name](**options)
