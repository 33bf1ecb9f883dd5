"""RP3beta and EASE against their closed forms on hand-made matrices, the grids' shared work against
fitting each point alone, and the tuning on validation against a case where the right choice is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pipeline.evaluation.baselines import (
    EASERecommender,
    ItemKNNRecommender,
    RP3betaRecommender,
    Unaffordable,
    baseline_grid,
    best_per_row,
)
from pipeline.evaluation.evaluate import EvaluationData, ModelReport
from pipeline.evaluation.tuning import tune
from pipeline.model.recommender import Recommender

# 3 readers x 4 books. Readers read 2, 2 and 3 books; books have 2, 2, 2 and 1 readers.
READS = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 1]], dtype=np.float32))


def rp3beta_by_hand(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """W = P(item -> reader)^alpha P(reader -> item)^alpha / popularity^beta, zero diagonal, dense."""
    item_to_reader = (x.T / x.T.sum(axis=1, keepdims=True)) ** alpha
    reader_to_item = (x / x.sum(axis=1, keepdims=True)) ** alpha
    walk = item_to_reader @ reader_to_item / x.sum(axis=0) ** beta
    np.fill_diagonal(walk, 0.0)
    return walk


def test_rp3beta_similarity_is_the_penalised_two_step_walk():
    # book 0 -> its readers 0 and 1 (1/2 each) -> their other books 1 and 2 (1/2 each): 1/4 each,
    # divided by popularity 2 ** 0.5; book 3 -> reader 2 (1) -> books 1 and 2 (1/3 each)
    model = RP3betaRecommender(alpha=1.0, beta=0.5, neighbours=3).fit(READS)
    weights = model.similarity.toarray()
    assert weights[0] == pytest.approx([0, 0.25 / 2**0.5, 0.25 / 2**0.5, 0])
    assert weights[3] == pytest.approx([0, 1 / 3 / 2**0.5, 1 / 3 / 2**0.5, 0])
    for alpha, beta in [(1.0, 0.5), (0.5, 0.0), (0.8, 0.7)]:
        model = RP3betaRecommender(alpha, beta, neighbours=3).fit(READS)
        expected = rp3beta_by_hand(READS.toarray(), alpha, beta)
        np.testing.assert_allclose(model.similarity.toarray(), expected, rtol=1e-6)
        np.testing.assert_allclose(model.score_users(np.arange(3)), READS.toarray() @ expected, rtol=1e-6)


def test_rp3beta_keeps_each_books_best_neighbours():
    model = RP3betaRecommender(alpha=1.0, beta=0.0, neighbours=1).fit(READS)
    weights = model.similarity.toarray()
    assert (np.count_nonzero(weights, axis=1) == 1).all()
    # book 1 (readers 0, 2) reaches book 0 with 1/4 and books 2, 3 with 1/6 each
    assert np.flatnonzero(weights[1]).tolist() == [0]
    # book 3 (reader 2) reaches books 1 and 2 with 1/3 each: one of the tied pair is kept
    assert np.flatnonzero(weights[3]).tolist() in ([1], [2]) and weights[3].max() == pytest.approx(1 / 3)
    # with beta 1 the penalty for popularity turns book 2's arrival (popularity 2) below book 3's (1)
    penalised = RP3betaRecommender(alpha=1.0, beta=1.0, neighbours=1).fit(READS).similarity.toarray()
    assert np.flatnonzero(penalised[2]).tolist() == [3]


def test_rp3beta_walks_a_block_of_books_at_a_time_and_keeps_only_their_neighbours(monkeypatch):
    from pipeline.evaluation import baselines

    reads = sp.random(300, 500, density=0.03, random_state=1, format="csr", dtype=np.float32)
    reads.data[:] = 1.0
    whole = RP3betaRecommender(0.8, 0.4, 20).fit(reads).similarity
    blocks = []
    contiguous_blocks = baselines.contiguous_blocks
    monkeypatch.setattr(baselines, "SIMILARITY_BLOCK", 400)  # walk entries (and padded candidates) at a time
    monkeypatch.setattr(
        baselines,
        "contiguous_blocks",
        lambda sizes, budget: blocks.extend(contiguous_blocks(sizes, budget)) or blocks,
    )
    blocked = RP3betaRecommender(0.8, 0.4, 20).fit(reads).similarity
    assert len(blocks) > 20 and max(end - start for start, end in blocks) < 500 / 10
    assert row_values(blocked) == row_values(whole) and np.diff(blocked.indptr).max() == 20


@pytest.mark.parametrize("shape", [(30, 50), (50, 30)])  # fewer readers than books (Woodbury), and more
def test_ease_scores_are_x_times_the_closed_form(shape):
    reads = sp.random(*shape, density=0.2, random_state=3, format="csr", dtype=np.float32)
    reads.data[:] = 1.0
    x = reads.toarray().astype(np.float64)
    l2 = 4.0
    inverse = np.linalg.inv(x.T @ x + l2 * np.eye(shape[1]))
    weights = np.eye(shape[1]) - inverse / np.diag(inverse)[None, :]  # B = I - P / diag(P)
    assert np.abs(np.diag(weights)).max() < 1e-12
    model = EASERecommender(l2).fit(reads)
    assert model.by_readers == (shape[0] < shape[1])
    np.testing.assert_allclose(model.score_users(np.arange(shape[0])), x @ weights, atol=2e-5)
    some = np.array([4, 0, 7])
    np.testing.assert_allclose(model.score_users(some), (x @ weights)[some], atol=2e-5)


def test_ease_is_skipped_when_its_dense_matrix_exceeds_the_budget():
    # 158,000 readers x 426,000 books (Book-Crossing at 10x): two 158,000^2 float32 matrices, ~186 GiB
    wide = sp.csr_matrix((158_000, 426_000), dtype=np.float32)
    with pytest.raises(Unaffordable, match=r"186\.0 GiB, above evaluate\.ease\.max_gib = 4 GiB"):
        baseline_grid("ease", wide, l2=[100.0], max_gib=4)
    grid = list(baseline_grid("ease", READS, l2=[1.0, 2.0], max_gib=4))
    assert [values for values, _ in grid] == [{"l2": 1.0}, {"l2": 2.0}]


def test_best_per_row_keeps_the_largest_entries_ties_to_the_lower_column():
    matrix = sp.csr_matrix(np.array([[0, 3, 1, 3, 2], [5, 0, 0, 0, 1], [0] * 5, [1] * 5], dtype=np.float32))
    assert best_per_row(matrix, 2).toarray().tolist() == [
        [0, 3, 0, 3, 0],
        [5, 0, 0, 0, 1],
        [0] * 5,
        [1, 1, 0, 0, 0],
    ]


def random_reads(seed: int = 0, readers: int = 120, books: int = 80) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    taste = rng.integers(0, 4, readers)
    chance = np.where(taste[:, None] == (np.arange(books) % 4)[None, :], 0.25, 0.03)
    return sp.csr_matrix((rng.random((readers, books)) < chance).astype(np.float32))


def row_values(matrix: sp.csr_matrix) -> list[list[float]]:
    """Each row's stored values, largest first: the same neighbours, whichever of tied books is kept
    (implicit's heap and torch's partial sort each pick their own)."""
    return [sorted(np.round(row.data, 5).tolist(), reverse=True) for row in matrix.tocsr()]


def test_grids_share_work_yet_give_the_models_fitted_alone():
    reads = random_reads()
    grid = baseline_grid("itemknn_bm25_tuned", reads, k1=[0.6, 1.2], b=[0.3], neighbours=[5, 12])
    for values, model in grid:
        alone = ItemKNNRecommender("bm25", values["neighbours"], values["k1"], values["b"]).fit(reads)
        assert row_values(model.similarity) == row_values(alone.similarity), values
    points = list(baseline_grid("rp3beta", reads, alpha=[0.6, 1.0], beta=[0.0, 0.5], neighbours=[4, 10]))
    assert len(points) == 8
    for values, model in points:
        alone = RP3betaRecommender(**values).fit(reads)
        assert row_values(model.similarity) == row_values(alone.similarity), values


class Favourite(Recommender):
    """Scores book `favourite` highest for everyone, then the books in index order."""

    def __init__(self, favourite: int, n_items: int):
        self.name, self.favourite, self.n_items = "favourite", favourite, n_items

    def fit(self, train):
        self.seen = train
        return self

    def score_users(self, users):
        scores = np.tile(-np.arange(self.n_items, dtype=np.float32), (len(users), 1))
        scores[:, self.favourite] = 1.0
        return scores


def known_case(n_users: int = 40, n_items: int = 12) -> dict[str, EvaluationData]:
    """Every reader read books 0 and 1; validation holds book 5, test holds book 7."""
    frame = lambda item: pd.DataFrame({"user_idx": range(n_users), "item_idx": item, "rating": 0})  # noqa: E731
    splits = {"train": pd.concat([frame(0), frame(1)]), "validation": frame(5), "test": frame(7)}
    items = pd.DataFrame(
        {
            "item_idx": range(n_items),
            "title": [f"book {i} volume {i % 3}" for i in range(n_items)],
            "author": [f"a{i}" for i in range(n_items)],
            "publisher": "p",
        }
    )
    return {target: EvaluationData.build(splits, items, n_users, target) for target in ("validation", "test")}


def test_tuning_picks_the_best_point_on_validation_never_on_test():
    data = known_case()
    grid = [({"favourite": f}, Favourite(f, 12).fit(data["validation"].train)) for f in (3, 7, 5, 9)]
    tuned = tune(iter(grid), data["validation"])
    assert tuned.chosen == {"favourite": 5} and tuned.model.favourite == 5
    record = tuned.record()
    by_point = {p["values"]["favourite"]: p["metrics"]["ndcg"] for p in record["grid"]}
    assert by_point[5] == pytest.approx(1.0) and by_point[7] < 1.0  # 7 is test's book: never chosen
    assert record["validation"]["ndcg"] == pytest.approx(1.0) and record["readers"] == 40


def test_tuning_ranks_only_the_sampled_validation_readers():
    from pipeline.evaluation.tuning import tuning_readers

    data = known_case(n_users=40)
    sample = tuning_readers(data["validation"], 10, seed=3)
    assert len(sample) == 10 and (np.diff(sample) > 0).all()
    assert sample.tolist() == tuning_readers(data["validation"], 10, seed=3).tolist()
    assert len(tuning_readers(data["validation"], 0, seed=3)) == 40
    grid = [({"favourite": f}, Favourite(f, 12).fit(data["validation"].train)) for f in (7, 5)]
    assert tune(iter(grid), data["validation"], sample).readers == 10


def test_tuning_keeps_the_earlier_of_tied_points():
    data = known_case()
    grid = [({"favourite": f}, Favourite(f, 12).fit(data["validation"].train)) for f in (9, 8, 10)]
    # each puts itself above books 2, 3, 4 and 5: book 5 comes fifth in every list
    tuned = tune(iter(grid), data["validation"])
    assert tuned.chosen == {"favourite": 9}
    assert len({p.metrics["ndcg"] for p in tuned.grid}) == 1


def test_metrics_document_carries_the_chosen_values_and_every_points_ndcg():
    from pipeline.storage.reports import metrics_document

    record = {
        "k": 10,
        "chosen": {"alpha": 0.8, "neighbours": 100},
        "validation": {"ndcg": 0.05, "coverage": 0.4},
        "grid": [
            {"values": {"alpha": 0.8, "neighbours": 100}, "metrics": {"ndcg": 0.05}},
            {"values": {"alpha": 1.0, "neighbours": 100}, "metrics": {"ndcg": 0.04}},
        ],
    }
    report = ModelReport("rp3beta", {"@10": {"ndcg": 0.06}}, pd.DataFrame(), {}, [], {}, tuning=record)
    assert ModelReport.from_dict("rp3beta", report.as_dict()).tuning == record
    flat = metrics_document({"rp3beta": report})["rp3beta"]
    assert flat == {
        "ndcg@10": 0.06,
        "chosen/alpha": 0.8,
        "chosen/neighbours": 100.0,
        "validation_ndcg@10": 0.05,
        "validation_coverage@10": 0.4,
        "validation_ndcg@10/alpha_0.8/neighbours_100": 0.05,
        "validation_ndcg@10/alpha_1/neighbours_100": 0.04,
    }
