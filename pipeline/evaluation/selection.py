"""Choices made on the validation split (pure): the weight of the ItemKNN neighbourhood term, and the
trade-off behind the default author cap. Both rank through the evaluator's one ranking path."""

from __future__ import annotations

import numpy as np

from pipeline.config import NeighbourhoodParams
from pipeline.evaluation import metrics
from pipeline.evaluation.baselines import ItemKNNRecommender
from pipeline.evaluation.evaluate import EvaluationData, ndcg_of
from pipeline.model.neighbourhood import Neighbourhood
from pipeline.model.recommender import NCFRecommender, Recommender
from pipeline.ranking import bounded_batch

BATCH = 512


def choose_neighbourhood(
    ncf: NCFRecommender, validation: EvaluationData, users: np.ndarray, settings: NeighbourhoodParams
) -> tuple[Neighbourhood | None, dict[float, float]]:
    """The ItemKNN term for a trained NCF, its weight the best of `settings.weights` by NDCG@10 on the
    validation `users`; None when that weight is 0. Returns it with every weight's NDCG@10.

    Each batch of users is scored once and blended for every weight, so trying more weights costs
    top-K passes, not model passes.
    """
    weights = sorted(set(settings.weights))
    if weights == [0.0]:
        return None, {}
    knn = ItemKNNRecommender("bm25", neighbours=settings.neighbours, k1=settings.k1, b=settings.b)
    similarity = knn.fit(validation.train).similarity
    tops: dict[float, list[np.ndarray]] = {w: [] for w in weights}
    size = bounded_batch(BATCH, validation.n_items)
    for start in range(0, len(users), size):
        batch = users[start : start + size]
        model_scores = ncf.score_users(batch)
        history = validation.train[batch]
        excluded = validation.exclude[batch]
        for weight in weights:
            blended = Neighbourhood(similarity, weight).blend(model_scores, history)
            tops[weight].append(validation.ranker.top_k(blended.copy(), excluded, 10)[0])
    truth = validation.truth[users]
    by_weight = {w: ndcg_of(np.concatenate(t), truth, 10) for w, t in tops.items()}
    best = max(weights, key=lambda w: (by_weight[w], -w))  # ties go to the smaller weight
    return (Neighbourhood(similarity, best) if best > 0 else None), by_weight


def author_cap_tradeoff(
    recommender: Recommender,
    data: EvaluationData,
    users: np.ndarray,
    caps: tuple[int | None, ...] = (None, 6, 5, 4, 3, 2, 1),
    k: int = 10,
) -> list[dict[str, float | None]]:
    """For each cap (None = off): NDCG@k, intra-list diversity and mean books per author in a list,
    all on the same users' lists. Each batch is scored once and ranked under every cap."""
    tops: dict[int | None, list[np.ndarray]] = {cap: [] for cap in caps}
    size = bounded_batch(BATCH, data.n_items)
    for start in range(0, len(users), size):
        batch = users[start : start + size]
        scores = np.asarray(recommender.score_users(batch), dtype=np.float32)
        excluded = data.exclude[batch]
        for cap in caps:
            ranker = data.ranker.with_rules(max_per_author=cap)
            tops[cap].append(ranker.top_k(scores.copy(), excluded, k)[0])
    truth = data.truth[users]
    rows = []
    for cap, parts in tops.items():
        top = np.concatenate(parts)
        rows.append(
            {
                "max_per_author": cap,
                "ndcg@10": ndcg_of(top, truth, k),
                "diversity": metrics.intra_list_diversity(top, data.item_content),
                "books_per_author": books_per_author(top, data.ranker.catalog.author),
            }
        )
    return rows


def books_per_author(top: np.ndarray, authors: np.ndarray) -> float:
    """Mean over lists of (listed books with a known author) / (distinct known authors)."""
    ratios = []
    for row in top:
        known = authors[row[row >= 0]]
        known = known[known >= 0]
        if len(known):
            ratios.append(len(known) / len(np.unique(known)))
    return float(np.mean(ratios)) if ratios else float("nan")
