"""The full-ranking evaluator: every test user, every item, read books excluded, one set of metrics.

Protocol: a model is fitted on train only; at test time each user's train and validation items are
excluded and the remaining catalog is ranked. The same top-K lists feed every metric, so accuracy and
beyond-accuracy figures always describe the same recommendations.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from pipeline.evaluation import metrics
from pipeline.model.recommender import Recommender

ACTIVITY_BUCKETS = (1, 5, 10, 20, 50)  # left edges of training-interaction-count buckets


def interaction_matrix(frame: pd.DataFrame, n_users: int, n_items: int) -> sp.csr_matrix:
    ones = np.ones(len(frame), dtype=np.float32)
    matrix = sp.csr_matrix(
        (ones, (frame["user_idx"].to_numpy(), frame["item_idx"].to_numpy())), shape=(n_users, n_items)
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def content_vectors(items: pd.DataFrame) -> sp.csr_matrix:
    """L2-normalised TF-IDF of title, author and publisher: a model-independent notion of similar books."""
    text = (
        items["title"].fillna("").astype(str)
        + " "
        + items["author"].fillna("").astype(str).str.replace(" ", "_")
        + " "
        + items["publisher"].fillna("").astype(str).str.replace(" ", "_")
    )
    vectorizer = TfidfVectorizer(min_df=2, sublinear_tf=True, token_pattern=r"(?u)\b\w[\w_]+\b")
    return vectorizer.fit_transform(text).tocsr().astype(np.float32)


@dataclass
class EvaluationData:
    """Everything the evaluator needs, built once and shared by every model."""

    train: sp.csr_matrix
    exclude: sp.csr_matrix  # train + validation: never recommended at test time
    truth: sp.csr_matrix  # the held-out split being scored (test, or validation for tuning)
    item_content: sp.csr_matrix
    cohorts: pd.DataFrame = field(default_factory=pd.DataFrame)  # index user_idx; one column per slicing

    @property
    def n_users(self) -> int:
        return self.train.shape[0]

    @property
    def n_items(self) -> int:
        return self.train.shape[1]

    def users_with_truth(self) -> np.ndarray:
        return np.flatnonzero(np.diff(self.truth.indptr) > 0)

    @classmethod
    def build(
        cls,
        splits: dict[str, pd.DataFrame],
        items: pd.DataFrame,
        n_users: int,
        target: str = "test",
        cohorts: pd.DataFrame | None = None,
    ) -> EvaluationData:
        n_items = len(items)
        train = interaction_matrix(splits["train"], n_users, n_items)
        if target == "test":
            exclude = interaction_matrix(pd.concat([splits["train"], splits["validation"]]), n_users, n_items)
        elif target == "validation":
            exclude = train
        else:
            raise ValueError(f"target must be 'test' or 'validation', not {target!r}")
        truth = interaction_matrix(splits[target], n_users, n_items)
        return cls(
            train, exclude, truth, content_vectors(items), cohorts if cohorts is not None else pd.DataFrame()
        )


def activity_bucket(train: sp.csr_matrix) -> pd.Series:
    counts = np.diff(train.indptr)
    edges = np.asarray(ACTIVITY_BUCKETS)
    labels = [f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:], strict=False)] + [f"{edges[-1]}+"]
    position = np.searchsorted(edges, counts, side="right") - 1
    return pd.Series([labels[p] if p >= 0 else "0" for p in position], name="activity")


@dataclass
class ModelReport:
    name: str
    metrics: dict[str, dict[str, float]]  # "@10" -> metric -> value
    curve: pd.DataFrame  # k, ndcg, recall
    cohorts: dict[str, dict[str, dict[str, float]]]  # slicing -> group -> metrics
    popularity_deciles: list[float]  # share of recommendations per item popularity decile (1 = least popular)
    seconds: dict[str, float]

    def as_dict(self) -> dict:
        return {
            "metrics": self.metrics,
            "cohorts": self.cohorts,
            "popularity_deciles": self.popularity_deciles,
            "seconds": self.seconds,
            "curve": self.curve.to_dict(orient="list"),
        }

    @classmethod
    def from_dict(cls, name: str, data: dict) -> ModelReport:
        return cls(
            name,
            data["metrics"],
            pd.DataFrame(data["curve"]),
            data["cohorts"],
            data["popularity_deciles"],
            data["seconds"],
        )


def evaluate(
    recommender: Recommender,
    data: EvaluationData,
    ks: tuple[int, ...] = (10, 20),
    curve_max_k: int = 50,
    cohort_k: int = 10,
    batch_size: int = 2048,
) -> ModelReport:
    users = data.users_with_truth()
    max_k = max(curve_max_k, *ks)
    started = time.perf_counter()
    top, _ = recommender.recommend(
        users, k=max_k, filter_seen=True, exclude=data.exclude, batch_size=batch_size
    )
    rank_seconds = time.perf_counter() - started
    truth = data.truth[users]
    popularity = metrics.item_popularity(data.train)
    n_train_users = int((np.diff(data.train.indptr) > 0).sum())
    tail = metrics.long_tail_items(popularity)

    results: dict[str, dict[str, float]] = {}
    for k in ks:
        results[f"@{k}"] = metrics.accuracy(top, truth, k) | metrics.beyond_accuracy(
            top[:, :k], data.item_content, popularity, n_train_users, tail
        )
    curve_rows = []
    for k in range(1, curve_max_k + 1):
        per_user = metrics.accuracy_per_user(top, truth, k)
        curve_rows.append(
            {"k": k, "ndcg": float(per_user["ndcg"].mean()), "recall": float(per_user["recall"].mean())}
        )

    cohort_results: dict[str, dict[str, dict[str, float]]] = {}
    per_user = metrics.accuracy_per_user(top, truth, cohort_k)
    slicings = data.cohorts.reindex(users) if not data.cohorts.empty else pd.DataFrame(index=users)
    slicings = slicings.assign(activity=activity_bucket(data.train)[users].to_numpy())
    for slicing in slicings.columns:
        groups = {}
        for group, members in pd.Series(np.arange(len(users))).groupby(slicings[slicing].to_numpy()):
            groups[str(group)] = {
                "users": len(members),
                f"ndcg@{cohort_k}": float(per_user["ndcg"][members].mean()),
                f"recall@{cohort_k}": float(per_user["recall"][members].mean()),
            }
        cohort_results[slicing] = groups

    deciles = np.zeros(len(popularity), dtype=np.int64)
    deciles[np.argsort(popularity, kind="stable")] = np.arange(len(popularity)) * 10 // len(popularity)
    listed = top[:, :cohort_k][top[:, :cohort_k] >= 0]
    decile_share = np.bincount(deciles[listed], minlength=10) / max(len(listed), 1)
    return ModelReport(
        name=recommender.name,
        metrics=results,
        curve=pd.DataFrame(curve_rows),
        cohorts=cohort_results,
        popularity_deciles=[float(x) for x in decile_share],
        seconds={"rank": round(rank_seconds, 3), "users": len(users)},
    )


def ndcg_at(recommender: Recommender, data: EvaluationData, k: int = 10, batch_size: int = 2048) -> float:
    """Just NDCG@k over every user with truth: the cheap figure for early stopping."""
    users = data.users_with_truth()
    top, _ = recommender.recommend(users, k=k, exclude=data.exclude, batch_size=batch_size)
    return float(metrics.accuracy_per_user(top, data.truth[users], k)["ndcg"].mean())
