"""Ranking metrics over top-K lists: pure functions of index arrays and sparse matrices.

Conventions (docs/metrics.md gives the formulas and how other libraries differ):
- `top_k` is an int array (users x K) of item indices, best first; -1 pads a list shorter than K.
- `truth` is a CSR matrix (users x items), non-zero where the item is relevant (a held-out test item).
- Accuracy metrics are averaged over users with at least one relevant item.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from pipeline.online import long_tail_items  # noqa: F401  (one split of head and tail)

ACCURACY_METRICS = ("precision", "recall", "ndcg", "hit_rate", "mrr", "map")


def hit_matrix(top_k: np.ndarray, truth: sp.csr_matrix) -> np.ndarray:
    """(users x K) bool: is the item at each rank relevant to that user."""
    n_users, n_items = truth.shape
    truth = truth.tocsr()
    truth_rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(truth.indptr))
    relevant_keys = np.sort(truth_rows * n_items + truth.indices.astype(np.int64))
    list_keys = np.arange(n_users, dtype=np.int64)[:, None] * n_items + top_k.astype(np.int64)
    position = np.searchsorted(relevant_keys, list_keys).clip(max=max(len(relevant_keys) - 1, 0))
    hits = relevant_keys[position] == list_keys if len(relevant_keys) else np.zeros(top_k.shape, bool)
    return hits & (top_k >= 0)


def accuracy_per_user(top_k: np.ndarray, truth: sp.csr_matrix, k: int) -> dict[str, np.ndarray]:
    """Each accuracy metric at cut-off `k` for every user with at least one relevant item."""
    hits = hit_matrix(top_k[:, :k], truth)
    n_relevant = np.diff(truth.tocsr().indptr)
    evaluated = n_relevant > 0
    hits, n_relevant = hits[evaluated], n_relevant[evaluated]
    ranks = np.arange(1, hits.shape[1] + 1)
    discounts = 1.0 / np.log2(ranks + 1)
    ideal_dcg = np.cumsum(discounts)[np.minimum(n_relevant, k) - 1]
    n_hits = hits.sum(axis=1)
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    precision_at_rank = np.cumsum(hits, axis=1) / ranks
    return {
        "precision": n_hits / k,
        "recall": n_hits / n_relevant,
        "ndcg": (hits * discounts).sum(axis=1) / ideal_dcg,
        "hit_rate": (n_hits > 0).astype(float),
        "mrr": np.where(first_hit > 0, 1.0 / np.maximum(first_hit, 1), 0.0),
        "map": (precision_at_rank * hits).sum(axis=1) / np.minimum(n_relevant, k),
    }


def accuracy(top_k: np.ndarray, truth: sp.csr_matrix, k: int) -> dict[str, float]:
    return {name: float(values.mean()) for name, values in accuracy_per_user(top_k, truth, k).items()}


def catalog_coverage(top_k: np.ndarray, n_items: int) -> float:
    """Share of the catalog that appears in at least one list."""
    listed = np.unique(top_k[top_k >= 0])
    return len(listed) / n_items


def personalization(top_k: np.ndarray) -> float:
    """1 - mean over pairs of different users of |L_u & L_v| / K, in O(U*K).

    The pairwise overlaps sum to sum_i c_i (c_i - 1) / 2, where c_i is the number of lists holding item i.
    """
    n_users, k = top_k.shape
    if n_users < 2:
        return float("nan")
    counts = np.bincount(top_k[top_k >= 0].ravel()).astype(np.float64)
    shared_pairs = (counts * (counts - 1) / 2).sum()
    mean_overlap = shared_pairs / (n_users * (n_users - 1) / 2)
    return float(1.0 - mean_overlap / k)


def intra_list_diversity(top_k: np.ndarray, item_vectors: sp.csr_matrix) -> float:
    """Mean over users of 1 - mean pairwise cosine similarity of the items within the list.

    `item_vectors` rows are L2-normalised, so for a list with sum vector S and n items the pairwise
    similarities sum to (|S|^2 - n) / 2, and no K x K matrix is formed.
    """
    n_users, k = top_k.shape
    valid = top_k >= 0
    list_lengths = valid.sum(axis=1)
    rows = np.repeat(np.arange(n_users), list_lengths)
    membership = sp.csr_matrix(
        (np.ones(len(rows)), (rows, top_k[valid])), shape=(n_users, item_vectors.shape[0])
    )
    sums = membership @ item_vectors
    squared_norms = np.asarray(sums.multiply(sums).sum(axis=1)).ravel()
    own_norms = np.asarray(
        membership @ np.asarray(item_vectors.multiply(item_vectors).sum(axis=1)).ravel()
    ).ravel()
    n_pairs = list_lengths * (list_lengths - 1)
    scored = n_pairs > 0
    mean_similarity = (squared_norms[scored] - own_norms[scored]) / n_pairs[scored]
    return float(np.mean(1.0 - mean_similarity)) if scored.any() else float("nan")


def item_popularity(train: sp.csr_matrix) -> np.ndarray:
    """Number of training users who interacted with each item."""
    return np.bincount(train.tocsr().indices, minlength=train.shape[1]).astype(np.int64)


def novelty(top_k: np.ndarray, popularity: np.ndarray, n_users: int) -> dict[str, float]:
    """Mean self-information -log2(popularity / n_users) of the listed items (popularity floored at 1),
    and the same divided by its maximum log2(n_users), in [0, 1]."""
    listed = top_k[top_k >= 0]
    information = -np.log2(np.maximum(popularity[listed], 1) / n_users)
    value = float(information.mean()) if len(listed) else float("nan")
    return {"novelty": value, "novelty_normalised": value / np.log2(n_users)}


def popularity_bias(top_k: np.ndarray, popularity: np.ndarray, tail: np.ndarray) -> dict[str, float]:
    listed = top_k[top_k >= 0]
    return {
        "mean_popularity": float(popularity[listed].mean()) if len(listed) else float("nan"),
        "long_tail_share": float(tail[listed].mean()) if len(listed) else float("nan"),
    }


def beyond_accuracy(
    top_k: np.ndarray,
    item_vectors: sp.csr_matrix,
    popularity: np.ndarray,
    n_train_users: int,
    tail: np.ndarray,
) -> dict[str, float]:
    return {
        "coverage": catalog_coverage(top_k, len(popularity)),
        "diversity": intra_list_diversity(top_k, item_vectors),
        "personalization": personalization(top_k),
        **novelty(top_k, popularity, n_train_users),
        **popularity_bias(top_k, popularity, tail),
    }


def novelty_per_user(top_k: np.ndarray, popularity: np.ndarray, n_users: int) -> np.ndarray:
    """Each list's mean normalised self-information (`novelty`'s novelty_normalised, per list; NaN
    for an empty list): the per-reader figure the gate pairs between two models."""
    valid = top_k >= 0
    information = -np.log2(np.maximum(popularity[np.where(valid, top_k, 0)], 1) / n_users) / np.log2(n_users)
    with np.errstate(invalid="ignore"):
        return np.where(valid, information, 0.0).sum(axis=1) / valid.sum(axis=1)


ALWAYS_DRAWN = 40  # an item in this many lists is in a resample of them but for odds of e**-40


def coverage_of_samples(top_k: np.ndarray, samples: np.ndarray, n_items: int) -> np.ndarray:
    """Catalog coverage of the lists of each sample of readers: `samples` (..., readers) holds row
    indices of `top_k` (a bootstrap's resamples of every reader, repeats allowed); returns (...).
    An item in ALWAYS_DRAWN or more lists counts as covered without looking (only items in few
    lists can be missing from a resample), which keeps a thousand resamples cheap."""
    samples = np.asarray(samples)
    flat = samples.reshape(-1, samples.shape[-1])
    valid = top_k >= 0
    lists_per_item = np.bincount(top_k[valid], minlength=n_items)
    rare = valid & (lists_per_item[np.where(valid, top_k, 0)] < ALWAYS_DRAWN)
    always = int((lists_per_item >= ALWAYS_DRAWN).sum())
    rows = np.repeat(np.arange(len(top_k)), rare.sum(axis=1))
    membership = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, top_k[rare])), shape=(len(top_k), n_items)
    )
    drawn = sp.csr_matrix(
        (np.ones(flat.size, dtype=np.float32), flat.ravel(), np.arange(0, flat.size + 1, flat.shape[1])),
        shape=(len(flat), len(top_k)),
    )
    listed = (drawn @ membership).getnnz(axis=1) + always
    return (listed / n_items).reshape(samples.shape[:-1])
