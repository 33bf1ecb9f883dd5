"""The recommender interface, the baselines and the evaluator on inputs where the answer is known."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pipeline.evaluation.baselines import make_baseline
from pipeline.evaluation.evaluate import EvaluationData, evaluate
from pipeline.model.recommender import Recommender
from pipeline.ranking import plain_top_k as top_k


def test_top_k_is_sorted_and_pads_excluded_items():
    scores = np.array([[0.1, 0.9, -np.inf, 0.5], [-np.inf, -np.inf, 1.0, -np.inf]], dtype=np.float32)
    ids, best = top_k(scores, 3)
    assert ids.tolist() == [[1, 3, 0], [2, -1, -1]]
    assert best[0].tolist() == pytest.approx([0.9, 0.5, 0.1])
    assert top_k(scores, 6)[0].shape == (2, 6)


class Fixed(Recommender):
    name = "fixed"

    def __init__(self, scores):
        self.scores = np.asarray(scores, dtype=np.float32)

    def fit(self, train):
        self.seen = train
        return self

    def score_users(self, users):
        return self.scores[users]


def test_recommend_filters_seen_items_and_respects_batches():
    seen = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 0, 1, 1]], dtype=np.float32))
    model = Fixed([[4, 3, 2, 1], [4, 3, 2, 1]]).fit(seen)
    assert model.recommend(np.array([0, 1]), k=2)[0].tolist() == [[1, 2], [0, 1]]
    assert model.recommend(np.array([0, 1]), k=2, filter_seen=False)[0].tolist() == [[0, 1], [0, 1]]
    assert model.recommend(np.array([0, 1]), k=2, batch_size=1)[0].tolist() == [[1, 2], [0, 1]]
    other = sp.csr_matrix(np.array([[0, 1, 0, 0], [0, 0, 0, 0]], dtype=np.float32))
    assert model.recommend(np.array([0]), k=2, exclude=other)[0].tolist() == [[0, 2]]


def test_similar_items_never_returns_the_item_itself():
    class WithVectors(Fixed):
        def item_vectors(self):
            return np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])

    ids, _ = WithVectors(np.zeros((1, 3))).similar_items(np.array([0, 2]), k=2)
    assert ids.tolist() == [[1, 2], [1, 0]]


def block_data(n_groups=3, users_per_group=20, items_per_group=10, seed=0):
    """Users of group g read only items of group g: train most of them, test the rest."""
    rng = np.random.default_rng(seed)
    rows = {"train": [], "validation": [], "test": []}
    for g in range(n_groups):
        items = np.arange(g * items_per_group, (g + 1) * items_per_group)
        for u in range(g * users_per_group, (g + 1) * users_per_group):
            chosen = rng.permutation(items)[:8]
            rows["test"] += [(u, i) for i in chosen[:2]]
            rows["validation"].append((u, chosen[2]))
            rows["train"] += [(u, i) for i in chosen[3:]]
    splits = {k: pd.DataFrame(v, columns=["user_idx", "item_idx"]).assign(rating=0) for k, v in rows.items()}
    n_items = n_groups * items_per_group
    items = pd.DataFrame(
        {
            "item_idx": range(n_items),
            "title": [f"book {i} shelf {i // items_per_group}" for i in range(n_items)],
            "author": [f"a{i % 4}" for i in range(n_items)],
            "publisher": "p",
        }
    )
    return EvaluationData.build(splits, items, n_groups * users_per_group)


@pytest.mark.parametrize("name", ["itemknn_bm25", "itemknn_cosine", "als"])
def test_collaborative_baselines_recover_planted_groups(name):
    data = block_data()
    options = {"als": {"factors": 8, "regularization": 5.0, "alpha": 10.0, "iterations": 15, "seed": 0}}.get(
        name, {"neighbours": 20}
    )
    model = make_baseline(name, **options).fit(data.train)
    users = data.users_with_truth()
    # 4 unread books are left on each user's own shelf (10 minus 5 train minus 1 validation)
    top, _ = model.recommend(users, k=4, exclude=data.exclude)
    same_group = (top // 10) == (users[:, None] // 20)
    assert same_group.mean() > 0.95
    report = evaluate(model, data, ks=(4,), curve_max_k=4)
    random_report = evaluate(make_baseline("random", seed=1).fit(data.train), data, ks=(4,), curve_max_k=4)
    assert report.metrics["@4"]["recall"] > 0.95
    assert report.metrics["@4"]["ndcg"] > 3 * random_report.metrics["@4"]["ndcg"]


def test_popularity_ranks_by_training_counts_and_evaluator_slices_cohorts():
    data = block_data()
    model = make_baseline("popularity").fit(data.train)
    counts = np.bincount(data.train.indices, minlength=data.n_items)
    ids, _ = model.recommend(np.array([0]), k=1, filter_seen=False)
    assert counts[ids[0, 0]] == counts.max()
    report = evaluate(model, data, ks=(5, 10), curve_max_k=10)
    assert set(report.metrics) == {"@5", "@10"}
    assert report.curve["k"].tolist() == list(range(1, 11))
    assert sum(g["users"] for g in report.cohorts["activity"].values()) == len(data.users_with_truth())
    assert sum(report.popularity_deciles) == pytest.approx(1.0)


def test_scores_to_rank_are_a_writable_row_major_copy_even_for_one_shared_row():
    """Popularity scores every reader with one broadcast row; a plain copy of that comes out column-major,
    and masking and the partial sort then cross the catalog at a stride (ranking took 3.8 times as long)."""
    data = block_data()
    model = make_baseline("popularity").fit(data.train)
    scores, items = model.candidate_scores(np.array([0, 1, 2]), 0)
    assert items is None and scores.flags.c_contiguous and scores.flags.writeable
    scores[0, 0] = -np.inf
    assert np.isfinite(model.candidate_scores(np.array([0]), 0)[0][0, 0])


def test_standardise_rows_by_hand():
    from pipeline.model.neighbourhood import standardise_rows

    scores = np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]], dtype=np.float32)
    # mean 2, population standard deviation sqrt(2/3): (x - 2) / 0.8165
    np.testing.assert_allclose(standardise_rows(scores)[0], [-1.224745, 0.0, 1.224745], rtol=1e-5)
    assert standardise_rows(scores)[1].tolist() == [0.0, 0.0, 0.0]  # a constant row carries no ranking


def test_neighbourhood_term_blends_standardised_scores_by_hand():
    from pipeline.model.neighbourhood import Neighbourhood
    from pipeline.serving.service import item_rows as history_rows

    # book 0 is similar to book 2 (0.5) and to book 3 (1.0); the reader read book 0
    similarity = sp.csr_matrix(np.array([[0, 0, 0.5, 1.0], [0, 0, 0, 0], [0.5, 0, 0, 0], [1.0, 0, 0, 0]]))
    rows = history_rows([np.array([0]), np.array([], dtype=np.int64)], 4)
    assert rows.toarray().tolist() == [[1, 0, 0, 0], [0, 0, 0, 0]]
    model_scores = np.array([[0.0, 3.0, 2.0, 1.0], [0.0, 3.0, 2.0, 1.0]], dtype=np.float32)
    # z(model) = (x - 1.5) / 1.118; z(neighbourhood) = ([0, 0, .5, 1] - .375) / .4146
    z_model = np.array([-1.341641, 1.341641, 0.447214, -0.447214])
    z_neighbours = np.array([-0.904534, -0.904534, 0.301511, 1.507557])
    blended = Neighbourhood(similarity, 1.0).blend(model_scores, rows)
    np.testing.assert_allclose(blended[0], z_model + z_neighbours, atol=1e-5)
    assert np.argmax(blended[0]) == 3 and np.argmax(model_scores[0]) == 1  # the term changed the top book
    # without history the term is constant: the model alone ranks (after standardising)
    np.testing.assert_allclose(blended[1], z_model, atol=1e-5)
    assert Neighbourhood(similarity, 0.0).blend(model_scores, rows) is model_scores


def test_neighbourhood_round_trips_through_safetensors_and_rejects_a_broken_file(tmp_path):
    from pipeline.model.neighbourhood import Neighbourhood
    from pipeline.storage.bundle import BundleError, load_neighbourhood, save_neighbourhood

    similarity = sp.random(50, 50, density=0.1, format="csr", dtype=np.float32, random_state=0)
    save_neighbourhood(tmp_path / "n.safetensors", Neighbourhood(similarity, 0.5))
    loaded = load_neighbourhood(tmp_path / "n.safetensors", 50)
    assert loaded.weight == 0.5 and (loaded.similarity != similarity).nnz == 0
    assert load_neighbourhood(tmp_path / "missing.safetensors", 50) is None
    (tmp_path / "n.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(BundleError, match=r"n\.safetensors"):
        load_neighbourhood(tmp_path / "n.safetensors", 50)


def test_neighbourhood_blend_equals_the_dense_formula_on_random_data():
    from pipeline.model.neighbourhood import Neighbourhood, standardise_rows
    from pipeline.serving.service import item_rows as history_rows

    rng = np.random.default_rng(3)
    similarity = sp.random(300, 300, density=0.05, format="csr", dtype=np.float32, random_state=4)
    histories = [rng.choice(300, size=n, replace=False) for n in (0, 1, 7, 40)]
    rows = history_rows(histories, 300)
    model_scores = rng.normal(size=(4, 300)).astype(np.float32)
    dense = standardise_rows(model_scores) + 0.7 * standardise_rows((rows @ similarity).toarray())
    np.testing.assert_allclose(Neighbourhood(similarity, 0.7).blend(model_scores, rows), dense, atol=1e-4)


def test_readers_ranked_in_several_processes_get_the_lists_of_one_process(monkeypatch):
    """Sharded evaluation: each forked process ranks its shard into shared memory; the lists are the
    ones a single process makes, in the same order, and a failing shard is an error, never a hole."""
    from dataclasses import replace

    from pipeline.evaluation import evaluate as evaluation

    monkeypatch.setattr(evaluation, "MIN_SHARD", 10)
    data = block_data(n_groups=4, users_per_group=30)
    model = make_baseline("als", factors=8, regularization=5.0, alpha=10.0, iterations=5, seed=0).fit(
        data.train
    )
    users = data.users_with_truth()
    one = data.lists(model, users, k=6)
    assert (one >= 0).all()
    np.testing.assert_array_equal(replace(data, processes=3).lists(model, users, k=6), one)
    calls = []
    parent = os.getpid()

    def lists_of(shard):
        calls.append(os.getpid())
        if os.getpid() != parent and shard[0] > users[0]:
            raise MemoryError("a shard failed")
        return model.recommend(shard, k=6, exclude=data.exclude)[0]

    with pytest.raises(RuntimeError, match="1 failed"):
        evaluation.sharded(lists_of, users, 6, processes=2)


def test_evaluation_on_a_reader_sample_keeps_the_sampled_readers_truth_whole():
    splits = {  # 12 readers with 2 held-out books each, one training book
        "train": pd.DataFrame({"user_idx": range(12), "item_idx": 0, "rating": 0}),
        "validation": pd.DataFrame({"user_idx": [0], "item_idx": [1], "rating": [0]}),
        "test": pd.DataFrame(
            {"user_idx": np.repeat(np.arange(12), 2), "item_idx": np.tile([2, 3], 12), "rating": 0}
        ),
    }
    items = pd.DataFrame(
        {
            "item_idx": range(4),
            "title": ["tea", "cake", "moon", "rain"],
            "author": ["ann", "bob", "cy", "di"],
            "publisher": "pub",
        }
    )
    everyone = EvaluationData.build(splits, items, 12)
    sampled = EvaluationData.build(splits, items, 12, max_readers=5, readers_seed=3)
    again = EvaluationData.build(splits, items, 12, max_readers=5, readers_seed=3)
    assert len(everyone.users_with_truth()) == 12
    readers = sampled.users_with_truth()
    assert len(readers) == 5 and readers.tolist() == again.users_with_truth().tolist()
    assert (
        sampled.truth[readers] != everyone.truth[readers]
    ).nnz == 0  # each sampled reader's books all kept
    other = EvaluationData.build(splits, items, 12, max_readers=5, readers_seed=4).users_with_truth()
    assert other.tolist() != readers.tolist()
    assert len(EvaluationData.build(splits, items, 12, max_readers=50).users_with_truth()) == 12
    # the catalog's size sets the sample: at most 20 readers x books over 4 books is 5 readers
    by_size = EvaluationData.build(splits, items, 12, max_scored_pairs=20, readers_seed=3)
    assert by_size.users_with_truth().tolist() == readers.tolist()
    assert by_size.sample_note() == {"readers": 5, "readers_with_held_out_books": 12, "sampled": True}
    assert everyone.sample_note()["sampled"] is False
    assert EvaluationData.build(splits, items, 12, max_readers=3, max_scored_pairs=20).population == 12
    assert (
        len(EvaluationData.build(splits, items, 12, max_readers=3, max_scored_pairs=20).users_with_truth())
        == 3
    )


def test_the_reader_cap_follows_the_catalog_size():
    from pipeline.evaluation.evaluate import readers_cap

    assert readers_cap(35_469) == 0  # no cap: every reader
    assert readers_cap(35_469, max_scored_pairs=2_000_000_000) == 56_387  # above Book-Crossing's readers
    assert readers_cap(426_000, max_scored_pairs=2_000_000_000) == 4_694
    assert readers_cap(426_000, max_readers=1_000, max_scored_pairs=2_000_000_000) == 1_000
    assert readers_cap(10**12, max_scored_pairs=10) == 1  # never no reader at all


def test_an_evaluation_batch_holds_a_bounded_number_of_scores(monkeypatch):
    import pipeline.ranking as ranking

    data = block_data()  # 30 items
    model = make_baseline("popularity").fit(data.train)
    asked = []
    recommend = model.recommend
    monkeypatch.setattr(
        model, "recommend", lambda *a, **kw: asked.append(kw["batch_size"]) or recommend(*a, **kw)
    )
    monkeypatch.setattr(ranking, "SCORES_PER_BATCH", 300)
    capped = data.lists(model, data.users_with_truth(), 5, batch_size=2048)
    assert asked == [10]  # 300 scores / 30 items
    monkeypatch.setattr(ranking, "SCORES_PER_BATCH", 1 << 27)
    assert (data.lists(model, data.users_with_truth(), 5, batch_size=2048) == capped).all()
    assert asked[-1] == 2048
