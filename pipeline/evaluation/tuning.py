"""Baselines tuned on validation only (pure): every grid point is fitted on train, its lists for the
validation readers come from the one ranking path (an `EvaluationData` with target "validation"), and
the point with the best validation NDCG@K is kept, fitted on train as it is: the test split is never
looked at. The record keeps every point's validation metrics, so the choice can be checked.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pipeline.evaluation import metrics
from pipeline.evaluation.evaluate import EvaluationData
from pipeline.model.recommender import Recommender

TUNING_K = 10  # the cut-off whose NDCG chooses (NDCG@10, the project's headline figure)


@dataclass(frozen=True)
class GridPoint:
    values: dict[str, float]  # the hyperparameters of this point
    metrics: dict[str, float]  # validation metrics @TUNING_K of its lists
    seconds: dict[str, float]  # fit (the first point of a group carries the work the group shares) and rank


@dataclass(frozen=True)
class Tuned:
    model: Recommender  # the chosen point, fitted on train
    chosen: dict[str, float]
    grid: tuple[GridPoint, ...]
    readers: int  # validation readers ranked for each point

    @property
    def validation(self) -> dict[str, float]:
        return next(point.metrics for point in self.grid if point.values == self.chosen)

    def record(self) -> dict:
        """What the report keeps: the chosen values, their validation metrics, every point's."""
        return {
            "k": TUNING_K,
            "readers": self.readers,
            "chosen": self.chosen,
            "validation": self.validation,
            "grid": [{"values": p.values, "metrics": p.metrics, "seconds": p.seconds} for p in self.grid],
            "seconds": {part: round(sum(p.seconds[part] for p in self.grid), 3) for part in ("fit", "rank")},
        }


def list_metrics(top: np.ndarray, data: EvaluationData, users: np.ndarray, k: int) -> dict[str, float]:
    """Accuracy against `data`'s truth and beyond-accuracy figures of the lists `top` of `users`."""
    popularity = metrics.item_popularity(data.train)
    n_train_users = int((np.diff(data.train.indptr) > 0).sum())
    return metrics.accuracy(top, data.truth[users], k) | metrics.beyond_accuracy(
        top[:, :k], data.item_content, popularity, n_train_users, metrics.long_tail_items(popularity)
    )


def tuning_readers(validation: EvaluationData, count: int, seed: int) -> np.ndarray:
    """The validation readers that choose: a seeded sample of `count` of those with held-out books
    (0: all of them), in index order."""
    users = validation.users_with_truth()
    if count and count < len(users):
        users = np.sort(np.random.default_rng(seed).choice(users, count, replace=False))
    return users


def tune(
    candidates: Iterable[tuple[dict, Recommender]],
    validation: EvaluationData,
    users: np.ndarray | None = None,
    batch_size: int = 512,
) -> Tuned:
    """The best of `candidates` (hyperparameters, model fitted on train) by NDCG@10 of the lists of
    the validation `users` (default: all with held-out books); ties go to the earlier point.
    Candidates are taken one at a time (a grid may fit them lazily, sharing work), and only the best
    so far is kept in memory."""
    users = validation.users_with_truth() if users is None else np.asarray(users, dtype=np.int64)
    if not len(users):
        raise ValueError("tuning needs validation readers with held-out books; the validation split has none")
    points: list[GridPoint] = []
    best: tuple[float, dict, Recommender] | None = None
    iterator = iter(candidates)
    while True:
        started = time.perf_counter()
        try:
            values, model = next(iterator)
        except StopIteration:
            break
        fitted = time.perf_counter()
        top = validation.lists(model, users, TUNING_K, batch_size)
        scores = list_metrics(top, validation, users, TUNING_K)
        seconds = {"fit": round(fitted - started, 3), "rank": round(time.perf_counter() - fitted, 3)}
        points.append(GridPoint(dict(values), scores, seconds))
        if best is None or scores["ndcg"] > best[0]:
            best = (scores["ndcg"], dict(values), model)
        del model
    if best is None:
        raise ValueError("tuning needs at least one grid point")
    return Tuned(best[2], best[1], tuple(points), len(users))


def flat_record(record: dict) -> dict[str, float]:
    """A tuning record as flat numbers for reports/metrics.json (and MLflow): `chosen/<name>`, the
    chosen point's `validation_<metric>@K`, and `validation_ndcg@K/<name>_<value>/...` for every point."""
    k = record["k"]
    flat = {f"chosen/{name}": float(value) for name, value in record["chosen"].items()}
    flat |= {f"validation_{metric}@{k}": float(value) for metric, value in record["validation"].items()}
    for point in record["grid"]:
        label = "/".join(f"{name}_{value:g}" for name, value in point["values"].items())
        flat[f"validation_ndcg@{k}/{label}"] = float(point["metrics"]["ndcg"])
    return flat
