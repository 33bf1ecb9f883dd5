"""Metrics: hand-checked values, invariants, and agreement with other libraries' documented formulas."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.evaluation import metrics


def csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    data = [(u, i) for u, items in enumerate(rows) for i in items]
    users, items = zip(*data, strict=True) if data else ((), ())
    return sp.csr_matrix((np.ones(len(users)), (users, items)), shape=(len(rows), n_items))


def test_accuracy_by_hand():
    truth = csr([[1, 3], [5]], 6)
    top = np.array([[1, 2, 3], [0, 2, 4]])
    got = metrics.accuracy(top, truth, 3)
    ndcg_user0 = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))  # 1.5 / 1.6309 = 0.91972
    assert got["precision"] == pytest.approx((2 / 3) / 2)
    assert got["recall"] == pytest.approx(0.5)
    assert got["ndcg"] == pytest.approx(ndcg_user0 / 2)
    assert got["ndcg"] == pytest.approx(0.4598603945740938)
    assert got["hit_rate"] == pytest.approx(0.5)
    assert got["mrr"] == pytest.approx(0.5)
    assert got["map"] == pytest.approx((1 + 2 / 3) / 2 / 2)


def test_perfect_lists_score_one_and_lists_without_hits_zero():
    truth = csr([[0, 1], [2], [3, 4, 5]], 8)
    perfect = np.array([[1, 0, 7], [2, 6, 7], [5, 3, 4]])
    for name in ("ndcg", "recall", "hit_rate", "mrr", "map"):
        assert metrics.accuracy(perfect, truth, 3)[name] == pytest.approx(1.0), name
    misses = np.array([[7, 6, 5], [7, 6, 5], [7, 6, 0]])
    assert all(v == 0 for v in metrics.accuracy(misses, truth, 3).values())


def test_users_without_truth_are_not_averaged_and_padding_never_hits():
    truth = csr([[0], [], [1]], 3)
    top = np.array([[0, -1], [0, 1], [-1, -1]])
    got = metrics.accuracy(top, truth, 2)
    assert got["hit_rate"] == pytest.approx(0.5)  # two users with truth, one hit


def test_ndcg_ideal_is_over_min_k_and_number_relevant():
    truth = csr([list(range(20))], 30)
    top = np.arange(10)[None, :]
    assert metrics.accuracy(top, truth, 10)["ndcg"] == pytest.approx(1.0)
    assert metrics.accuracy(top, truth, 10)["recall"] == pytest.approx(0.5)


def test_personalization_by_hand():
    # overlaps: (0,1) share item 0; the other pairs share nothing -> mean overlap 1/3, / K = 1/6
    assert metrics.personalization(np.array([[0, 1], [0, 2], [3, 4]])) == pytest.approx(1 - 1 / 6)


def pairwise_personalization(top: np.ndarray) -> float:
    """recmetrics' definition: 1 - mean cosine similarity of the users' binary list vectors (upper triangle)."""
    n_items = top.max() + 1
    vectors = np.zeros((len(top), n_items))
    for u, row in enumerate(top):
        vectors[u, row] = 1
    norms = np.linalg.norm(vectors, axis=1)
    similarity = vectors @ vectors.T / np.outer(norms, norms)
    upper = similarity[np.triu_indices(len(top), k=1)]
    return 1 - upper.mean()


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 25), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_fast_personalization_equals_pairwise_definition(n_users, k, seed):
    rng = np.random.default_rng(seed)
    n_items = k + int(rng.integers(0, 10))
    top = np.stack([rng.choice(n_items, size=k, replace=False) for _ in range(n_users)])
    assert metrics.personalization(top) == pytest.approx(pairwise_personalization(top))


def test_random_and_popularity_personalization_at_scale():
    rng = np.random.default_rng(0)
    n_users, n_items, k = 10_000, 30_000, 10
    # k distinct items per user: the first k of a random permutation, drawn as argpartition of noise
    top = np.argpartition(rng.random((n_users, n_items), dtype=np.float32), k, axis=1)[:, :k]
    assert metrics.personalization(top) == pytest.approx(1 - k / n_items, abs=0.001)
    same_for_everyone = np.tile(np.arange(k), (n_users, 1))
    assert metrics.personalization(same_for_everyone) == pytest.approx(0.0)


def test_intra_list_diversity_by_hand():
    vectors = sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    assert metrics.intra_list_diversity(np.array([[0, 1]]), vectors) == pytest.approx(1.0)
    assert metrics.intra_list_diversity(np.array([[0, 2]]), vectors) == pytest.approx(0.0)
    assert metrics.intra_list_diversity(np.array([[0, 1, 2]]), vectors) == pytest.approx(1 - 1 / 3)
    assert metrics.intra_list_diversity(np.array([[0, 1], [0, 2]]), vectors) == pytest.approx(0.5)


def test_intra_list_diversity_equals_pairwise_cosine_definition():
    rng = np.random.default_rng(3)
    dense = rng.random((40, 12)) * (rng.random((40, 12)) < 0.4)
    dense[dense.sum(axis=1) == 0, 0] = 1.0
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    top = np.stack([rng.choice(40, size=6, replace=False) for _ in range(15)])
    expected = np.mean(
        [1 - np.mean([dense[a] @ dense[b] for a, b in itertools.combinations(row, 2)]) for row in top]
    )
    assert metrics.intra_list_diversity(top, sp.csr_matrix(dense)) == pytest.approx(expected, rel=1e-5)


def test_novelty_by_hand_and_as_recommenders_weighted_formula():
    popularity = np.array([4, 2, 1, 0])
    top = np.array([[0, 1], [2, 3]])
    got = metrics.novelty(top, popularity, n_users=8)
    assert got["novelty"] == pytest.approx((1 + 2 + 3 + 3) / 4)
    assert got["novelty_normalised"] == pytest.approx(2.25 / 3)
    # microsoft/recommenders: sum over items of (times recommended * -log2(p_i)) / number of slots
    times = np.bincount(top.ravel(), minlength=4)
    item_novelty = -np.log2(np.maximum(popularity, 1) / 8)
    assert got["novelty"] == pytest.approx((times * item_novelty).sum() / times.sum())


def test_coverage_long_tail_and_popularity_bias():
    popularity = np.array([50, 30, 10, 5, 3, 2])  # total 100; the head (20% of interactions) is item 0
    tail = metrics.long_tail_items(popularity, head_share=0.2)
    assert tail.tolist() == [False, True, True, True, True, True]
    top = np.array([[0, 1], [0, 5]])
    assert metrics.catalog_coverage(top, 6) == pytest.approx(3 / 6)
    bias = metrics.popularity_bias(top, popularity, tail)
    assert bias["mean_popularity"] == pytest.approx((50 + 30 + 50 + 2) / 4)
    assert bias["long_tail_share"] == pytest.approx(0.5)


def test_hit_matrix_matches_dense_lookup():
    rng = np.random.default_rng(5)
    dense = rng.random((30, 50)) < 0.1
    top = np.stack([rng.choice(50, size=7, replace=False) for _ in range(30)])
    expected = np.take_along_axis(dense, top, axis=1)
    assert np.array_equal(metrics.hit_matrix(top, sp.csr_matrix(dense)), expected)
