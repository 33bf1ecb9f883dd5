"""The full-ranking evaluator: every test user, every item, known books excluded, one set of metrics.

Protocol bx-implicit-v2 (docs/metrics.md): a model is fitted on train only; at test time the catalog
is ranked for each user by the one ranking path that serving uses, with the same exclusion rule
(the user's train and validation books, their explicit ratings 1-4, and every other edition of
those) and the same list rules (one edition per work, the author cap). A held-out book that the rule
excludes (another edition of a known book) can be recommended by no model and leaves the truth.
The same top-K lists feed every metric, so accuracy and beyond-accuracy figures describe the same
recommendations.
"""

from __future__ import annotations

import mmap
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from sklearn.feature_extraction.text import TfidfVectorizer

from pipeline.data.catalog import Catalog
from pipeline.data.protocol import PROTOCOL
from pipeline.evaluation import metrics
from pipeline.model.recommender import Recommender
from pipeline.ranking import SERVING_DEFAULT, ListRules, Ranker, bounded_batch

V1 = "bx-implicit-v1"  # the protocol before serving's exclusion rule and list rules
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
    exclude: sp.csr_matrix  # known books (and their other editions): never recommended at scoring time
    truth: sp.csr_matrix  # the held-out split being scored (test, or validation for tuning)
    items: pd.DataFrame  # the catalog's books (title, author, publisher: the content of `item_content`)
    ranker: Ranker  # the one ranking path, with the catalog and the list rules that serving uses
    cohorts: pd.DataFrame = field(default_factory=pd.DataFrame)  # index user_idx; one column per slicing
    processes: int = 1  # readers are ranked in this many processes, one shard each (see `sharded`)
    population: int = 0  # readers with held-out books before any sample was drawn

    @property
    def n_users(self) -> int:
        return self.train.shape[0]

    @property
    def n_items(self) -> int:
        return self.train.shape[1]

    @cached_property
    def item_content(self) -> sp.csr_matrix:
        """TF-IDF of the books' text, for intra-list diversity; built when first needed (training's
        validation never needs it)."""
        return content_vectors(self.items)

    def users_with_truth(self) -> np.ndarray:
        return np.flatnonzero(np.diff(self.truth.indptr) > 0)

    def lists(
        self, recommender: Recommender, users: np.ndarray, k: int, batch_size: int = 2048
    ) -> np.ndarray:
        """(len(users), k) item indices: what `recommender` would serve these users under the protocol.

        A batch holds at most `ranking.SCORES_PER_BATCH` scores (readers x catalog), whatever `batch_size`
        says, so a catalog many times Book-Crossing's does not multiply the memory of a batch."""
        batch_size = bounded_batch(batch_size, self.n_items)

        def lists_of(shard: np.ndarray) -> np.ndarray:
            return recommender.recommend(
                shard, k=k, exclude=self.exclude, ranker=self.ranker, batch_size=batch_size
            )[0]

        return sharded(lists_of, np.asarray(users, dtype=np.int64), k, self.processes)

    @classmethod
    def build(
        cls,
        splits: dict[str, pd.DataFrame],
        items: pd.DataFrame,
        n_users: int,
        target: str = "test",
        cohorts: pd.DataFrame | None = None,
        dislikes: pd.DataFrame | None = None,
        rules: ListRules = SERVING_DEFAULT,
        protocol: str = PROTOCOL,
        processes: int = 1,
        max_readers: int = 0,
        readers_seed: int = 0,
        max_scored_pairs: int = 0,
    ) -> EvaluationData:
        """`target` "test": train + validation are known; "validation": train is known. Known books,
        the user's `dislikes` and every other edition of either are excluded (and leave the truth).

        `protocol` "bx-implicit-v1" is the previous rule, kept to compare figures across the change:
        only the known positives are excluded and no list rule applies.

        `max_readers` > 0 keeps the truth of a seeded sample of that many readers (the same sample
        for every model on this data): evaluation costs readers x catalog, and on a catalog many
        times Book-Crossing's a sample of its size measures as well as everyone. `max_scored_pairs`
        > 0 caps readers x catalog the same way (`readers_cap`): the catalog's size decides."""
        n_items = len(items)
        known_splits = {"test": ["train", "validation"], "validation": ["train"]}.get(target)
        if known_splits is None:
            raise ValueError(f"target must be 'test' or 'validation', not {target!r}")
        known = [splits[name] for name in known_splits]
        if protocol == V1:
            exclude = interaction_matrix(pd.concat(known), n_users, n_items)
            catalog, rules = Catalog.of_distinct_items(n_items), ListRules(one_per_work=False)
        elif protocol == PROTOCOL:
            catalog = Catalog.from_items(items)
            known += [dislikes] if dislikes is not None else []
            exclude = catalog.with_editions(interaction_matrix(pd.concat(known), n_users, n_items))
        else:
            raise ValueError(f"protocol must be {PROTOCOL!r} or {V1!r}, not {protocol!r}")
        truth = interaction_matrix(splits[target], n_users, n_items)
        truth = (truth - truth.multiply(exclude)).tocsr()
        truth.eliminate_zeros()
        population = int((np.diff(truth.indptr) > 0).sum())
        truth = sample_readers(truth, readers_cap(n_items, max_readers, max_scored_pairs), readers_seed)
        return cls(
            interaction_matrix(splits["train"], n_users, n_items),
            exclude,
            truth,
            items,
            Ranker(catalog, rules),
            cohorts if cohorts is not None else pd.DataFrame(),
            processes,
            population,
        )

    def sample_note(self) -> dict:
        """How many readers are ranked, out of how many with held-out books (for the reports)."""
        readers = len(self.users_with_truth())
        return {
            "readers": readers,
            "readers_with_held_out_books": self.population,
            "sampled": readers < self.population,
        }


def readers_cap(n_items: int, max_readers: int = 0, max_scored_pairs: int = 0) -> int:
    """How many readers an evaluation ranks at most (0 = all): `max_readers`, and no more than
    `max_scored_pairs` readers x books (at least one reader), so that the catalog's size sets the
    sample where the full product is too large."""
    caps = [max_readers] if max_readers else []
    if max_scored_pairs:
        caps.append(max(1, max_scored_pairs // max(n_items, 1)))
    return min(caps) if caps else 0


def sample_readers(truth: sp.csr_matrix, max_readers: int, seed: int) -> sp.csr_matrix:
    """`truth` with the rows of all but a seeded sample of `max_readers` readers emptied (0: all kept)."""
    readers = np.flatnonzero(np.diff(truth.indptr) > 0)
    if not max_readers or len(readers) <= max_readers:
        return truth
    keep = np.zeros(truth.shape[0], dtype=np.float32)
    keep[np.random.default_rng(seed).choice(readers, max_readers, replace=False)] = 1.0
    sampled = (sp.diags(keep) @ truth).tocsr()
    sampled.eliminate_zeros()
    return sampled


MIN_SHARD = 500  # fewer readers per process than this are ranked in the calling process


def sharded(
    lists_of: Callable[[np.ndarray], np.ndarray], users: np.ndarray, k: int, processes: int
) -> np.ndarray:
    """`lists_of(users)`, with the readers split into `processes` contiguous shards, each ranked in a
    forked process (one core each: ranking a reader is mostly single-threaded numpy and torch) that
    writes its rows into shared memory; the same lists as one process, in the same order.

    Fork, not spawn: the children share the parent's model and matrices copy-on-write, nothing is
    serialised. The first reader is ranked here first, so lazily built caches are built once."""
    processes = min(processes, len(users) // MIN_SHARD)
    if processes <= 1:
        return lists_of(users)
    lists_of(users[:1])
    buffer = mmap.mmap(
        -1, max(len(users) * k * 8, 1)
    )  # anonymous and shared: the children's writes show here
    out = np.frombuffer(buffer, dtype=np.int64).reshape(len(users), k)
    bounds = np.linspace(0, len(users), processes + 1).astype(np.int64)

    def rank_shard(start: int, end: int) -> None:
        torch.set_num_threads(1)
        out[start:end] = lists_of(users[start:end])

    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=rank_shard, args=(a, b), daemon=True)
        for a, b in zip(bounds, bounds[1:], strict=False)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    failed = [worker.exitcode for worker in workers if worker.exitcode != 0]
    if failed:
        raise RuntimeError(
            f"ranking readers in {processes} processes: {len(failed)} failed (exit codes {failed})"
        )
    return out.copy()


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
    readers: dict = field(default_factory=dict)  # EvaluationData.sample_note(): who was ranked
    tuning: dict = field(default_factory=dict)  # a tuned baseline's record (evaluation/tuning.py)

    def as_dict(self) -> dict:
        return {
            "metrics": self.metrics,
            "cohorts": self.cohorts,
            "popularity_deciles": self.popularity_deciles,
            "seconds": self.seconds,
            "readers": self.readers,
            "curve": self.curve.to_dict(orient="list"),
        } | ({"tuning": self.tuning} if self.tuning else {})

    @classmethod
    def from_dict(cls, name: str, data: dict) -> ModelReport:
        return cls(
            name,
            data["metrics"],
            pd.DataFrame(data["curve"]),
            data["cohorts"],
            data["popularity_deciles"],
            data["seconds"],
            data.get("readers", {}),
            data.get("tuning", {}),
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
    top = data.lists(recommender, users, max_k, batch_size)
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
        readers=data.sample_note(),
    )


def ndcg_of(top: np.ndarray, truth: sp.csr_matrix, k: int = 10) -> float:
    """Mean NDCG@k of lists (rows aligned with `truth`'s rows)."""
    return float(metrics.accuracy_per_user(top, truth, k)["ndcg"].mean())


def ndcg_at(
    recommender: Recommender,
    data: EvaluationData,
    users: np.ndarray | None = None,
    k: int = 10,
    batch_size: int = 2048,
) -> float:
    """Just NDCG@k over `users` (default: every user with truth): the figure for early stopping and
    for the gate's re-measurement."""
    users = data.users_with_truth() if users is None else np.asarray(users, dtype=np.int64)
    return ndcg_of(data.lists(recommender, users, k, batch_size), data.truth[users], k)
