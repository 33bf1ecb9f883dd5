"""`BookRecommender`: raw Book-Crossing ids in, ranked ISBNs out. The one serving core behind the MLflow
pyfunc, the REST API and the dashboard.

Known readers are scored from their id, side features and everything they are known to have read;
unknown readers by the cold-start path (age and location, plus any liked books folded into the
history); new interactions are folded in the same way, without retraining.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from pipeline.data.locations import split_location
from pipeline.data.protocol import is_positive
from pipeline.model.recommender import NCFRecommender, most_excluded
from pipeline.ranking import ListRules, Ranker, bounded_batch
from pipeline.serving.standing import StandingLists
from pipeline.storage.bundle import POSITIVES, Bundle, load_bundle

if TYPE_CHECKING:
    from pipeline.storage.feedback import FeedbackStore

EXCLUDE_MODES = ("all", "train")
MAX_K = 200


def item_rows(lists: list[np.ndarray], n_items: int) -> sp.csr_matrix:
    """A binary (len(lists), n_items) matrix from lists of item indices (duplicates collapse)."""
    lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    indices = np.concatenate(lists).astype(np.int64) if len(lists) else np.empty(0, np.int64)
    rows = sp.csr_matrix(
        (np.ones(len(indices), dtype=np.float32), indices, np.concatenate([[0], np.cumsum(lengths)])),
        shape=(len(lists), n_items),
    )
    rows.sum_duplicates()
    rows.data[:] = 1.0
    return rows


def binary_union(*matrices: sp.csr_matrix) -> sp.csr_matrix:
    """Binary rows holding the items of any of `matrices` (same shape). Empty ones are skipped: a
    reader with nothing read since training is the common case, and each sparse sum costs scipy's
    construction overhead (a tenth of a millisecond) on the serving path."""
    kept = [m for m in matrices if m.nnz] or [matrices[0]]
    if len(kept) == 1:
        return kept[0]
    union = sum(kept[1:], kept[0]).tocsr()
    union.data[:] = 1.0
    return union


def reads_and_likes(latest: Mapping[str, int], min_explicit_rating: int) -> tuple[list[str], list[str]]:
    """(every ISBN of a reader's stored ratings, the ones that count as positives by the protocol) from
    ISBN -> latest rating (`FeedbackStore.latest_ratings`)."""
    liked = [isbn for isbn, rating in latest.items() if is_positive(rating, min_explicit_rating)]
    return sorted(latest), sorted(liked)


def _texts(column: pd.Series) -> np.ndarray:
    """Strings as they are, anything else (missing) None."""
    return np.array([value if isinstance(value, str) else None for value in column.tolist()], object)


class UnknownBookError(KeyError):
    """An ISBN that is not in the model's catalog."""

    def __str__(self) -> str:
        return f"unknown ISBN {self.args[0]!r}: not in the catalog of this model"


@dataclass(frozen=True)
class Reader:
    """A reader the model has never seen: what we know of them."""

    age: float | None = None
    location: str | None = None
    liked_isbns: tuple[str, ...] = ()


class BookRecommender:
    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.model = bundle.model
        self.items = bundle.items
        self.users = bundle.users
        self.min_explicit_rating = int(bundle.metadata.get("min_explicit_rating", 5))
        # Plain dicts: a lookup on the hot path costs a fraction of a microsecond.
        self.user_index = {str(u): i for i, u in enumerate(bundle.users["user_id"])}
        self.item_index = {str(isbn): i for i, isbn in enumerate(bundle.items["isbn"])}
        self.isbns = bundle.items["isbn"].astype(str).to_numpy(dtype=object)
        # the details JSON answers carry, one column each (a dict per book cost seconds per load, and a
        # catalog grown by added books is loaded again)
        items = bundle.items
        self._details = {
            "isbn": self.isbns,
            "title": _texts(items["title"]),
            "author": _texts(items["author"]),
            "year": np.array([None if pd.isna(y) else int(y) for y in items["year"].tolist()], dtype=object),
            "publisher": _texts(items["publisher"]),
            "cover_url": _texts(items["image_url_m"]),
        }
        self.catalog = bundle.catalog
        self.ranker = Ranker(
            self.catalog, ListRules(one_per_work=True, max_per_author=bundle.metadata.get("max_per_author"))
        )
        self.plain_ranker = Ranker(self.catalog, ListRules(one_per_work=False))  # exclusions only
        self.engines = self._engines(bundle)
        self.standing: StandingLists | None = None  # `keep_standing_lists` turns them on
        self.similarity = self.engines["all"].similarity(bundle.metadata.get("ann_threshold", 100_000))

    @staticmethod
    def _engines(bundle: Bundle) -> dict[str, NCFRecommender]:
        """ "all": the representation and the exclusion use everything the reader is known to have
        read or rated. "train": exactly the evaluation protocol (history = train; excluded = train,
        validation, dislikes, and their other editions). One extra empty row (index n_users) stands for
        readers the model does not know, so every reader indexes the same matrices."""

        def padded(matrix: sp.csr_matrix) -> sp.csr_matrix:
            return sp.vstack([matrix, sp.csr_matrix((1, bundle.n_items), dtype=np.float32)]).tocsr()

        every = bundle.recommender(padded(bundle.matrix(POSITIVES)), padded(bundle.exclusion()))
        train = bundle.recommender(
            padded(bundle.matrix(("train",))), padded(bundle.exclusion(("train", "validation", "dislike")))
        ).share_item_cache(every)
        return {"all": every, "train": train}

    @classmethod
    def from_folder(cls, folder: Path) -> BookRecommender:
        return cls(load_bundle(folder))

    def build_indexes(self) -> BookRecommender:
        """Build the HNSW indexes (similar books; two-stage retrieval) that the catalog's size calls for
        now, rather than at the first request that needs them: what a serving holder does before a
        version serves. Loading alone builds none (the gate and evaluation rank in full)."""
        self.similarity.build_index()
        for engine in self.engines.values():
            if engine.two_stage:
                engine.candidate_index()
        return self

    # -- lookups ----------------------------------------------------------------------------------

    def item_indices(self, isbns: Iterable[str], strict: bool = True) -> np.ndarray:
        found = []
        for isbn in isbns:
            key = str(isbn).strip().upper()
            if key in self.item_index:
                found.append(self.item_index[key])
            elif strict:
                raise UnknownBookError(isbn)
        return np.asarray(found, dtype=np.int64)

    def known_user(self, user_id: str) -> int | None:
        key = str(user_id).strip()
        return self.user_index.get(key)

    def read_items(self, user_id: str) -> np.ndarray:
        index = self.known_user(user_id)
        if index is None:
            return np.empty(0, dtype=np.int64)
        matrix = self.engines["all"].history
        return matrix.indices[matrix.indptr[index] : matrix.indptr[index + 1]].astype(np.int64)

    def books(self, item_indices: np.ndarray) -> pd.DataFrame:
        return self.items.iloc[np.asarray(item_indices, dtype=np.int64)]

    def book(self, isbn: str) -> pd.Series:
        return self.items.iloc[int(self.item_indices([isbn])[0])]

    @property
    def popularity(self) -> np.ndarray:
        """Number of readers known to have read each book."""
        if not hasattr(self, "_popularity"):
            history = self.engines["all"].history
            self._popularity = np.bincount(history.indices, minlength=self.bundle.n_items)
        return self._popularity

    def search(self, query: str, limit: int = 30) -> pd.DataFrame:
        """Books whose title or author contains every word of `query` (case-insensitive), most read first."""
        words = [w for w in str(query).lower().split() if w]
        if not words:
            return self.items.iloc[:0]
        text = (self.items["title"].fillna("") + " " + self.items["author"].fillna("")).str.lower()
        match = np.ones(len(text), dtype=bool)
        for word in words:
            match &= text.str.contains(word, regex=False).to_numpy()
        found = np.flatnonzero(match)
        order = found[np.argsort(-self.popularity[found], kind="stable")][:limit]
        return self.items.iloc[order]

    def example_users(self, n: int = 6, min_reads: int = 15, max_reads: int = 60) -> list[str]:
        """A few readers with a telling history, for the dashboard's examples (deterministic)."""
        counts = np.diff(self.engines["all"].history.indptr)[: self.bundle.n_users]
        candidates = np.flatnonzero((counts >= min_reads) & (counts <= max_reads))
        chosen = (
            candidates[np.linspace(0, len(candidates) - 1, num=min(n, len(candidates)), dtype=int)]
            if len(candidates)
            else []
        )
        return [str(self.users.iloc[int(i)]["user_id"]) for i in chosen]

    # -- recommendations --------------------------------------------------------------------------

    def validate_k(self, k: int) -> int:
        if not 1 <= int(k) <= MAX_K:
            raise ValueError(f"k must be between 1 and {MAX_K}, not {k}")
        return int(k)

    def encode_readers(self, readers: list[Reader]) -> torch.Tensor:
        """Side-feature ids of readers the model does not know, encoded exactly like training users."""
        table = pd.DataFrame({"age": [r.age for r in readers], "location": [r.location for r in readers]})
        places = split_location(table["location"].astype("string"))
        ages = pd.to_numeric(table["age"], errors="coerce")
        low, high = self.bundle.metadata.get("age_range", (5, 100))
        places["age"] = ages.where(ages.between(low, high))
        encoded = self.bundle.vocabulary.encode_users(places)
        return torch.from_numpy(
            encoded[["age_bucket", "country", "region"]].to_numpy(dtype=np.int64, copy=True)
        )

    def live_history(self, store: FeedbackStore, user_id: str) -> tuple[list[str], list[str]]:
        """(every ISBN the reader told the feedback store about, the ones that count as positives by
        this model's protocol): what the API and the dashboard fold in and exclude."""
        return reads_and_likes(store.latest_ratings(user_id), self.min_explicit_rating)

    def rules_for(self, max_per_author: int | None | str = "default") -> ListRules:
        """The model's list rules, with the author cap overridden (0 or None: no cap) unless "default"."""
        if max_per_author == "default":
            return self.ranker.rules
        cap = int(max_per_author) if max_per_author else None
        return ListRules(one_per_work=True, max_per_author=cap)

    def recommend(
        self,
        user_ids: list[str],
        k: int = 10,
        exclude: str = "all",
        readers: Mapping[str, Reader] | None = None,
        extra_reads: Mapping[str, Iterable[str]] | None = None,
        extra_excluded: Mapping[str, Iterable[str]] | None = None,
        rules: ListRules | None = None,
        blocked: Mapping[str, Iterable[str]] | None = None,
    ) -> pd.DataFrame:
        """Top-k books per reader, one row per recommendation: user_id, rank, isbn, score.

        Known readers get their model representation; `extra_reads` (books liked since training) are
        folded into their history, and they and `extra_excluded` (say, books read and disliked) are
        never recommended, nor any other edition of them. Unknown readers get the cold-start path from
        `readers[user_id]` (age, location, liked books), or from nothing at all.
        """
        ids, best = self.rank(user_ids, k, exclude, readers, extra_reads, extra_excluded, rules, blocked)
        return self._frame("user_id", [str(u).strip() for u in user_ids], ids, best, "isbn")

    def rank(
        self,
        user_ids: list[str],
        k: int = 10,
        exclude: str = "all",
        readers: Mapping[str, Reader] | None = None,
        extra_reads: Mapping[str, Iterable[str]] | None = None,
        extra_excluded: Mapping[str, Iterable[str]] | None = None,
        rules: ListRules | list[ListRules] | None = None,
        blocked: Mapping[str, Iterable[str]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`recommend` as arrays: item indices (-1 pads) and scores, one row per reader. `rules` is one
        `ListRules` for every reader, or one per reader (default: the model's). `blocked` ISBNs (a
        request's exclude list, books marked unavailable) are never listed, but unlike known books
        they leave the other editions of their work eligible."""
        k = self.validate_k(k)
        if exclude not in EXCLUDE_MODES:
            raise ValueError(f"exclude must be one of {', '.join(EXCLUDE_MODES)}, not {exclude!r}")
        if not user_ids:
            return np.empty((0, k), dtype=np.int64), np.empty((0, k), dtype=np.float32)
        engine = self.engines[exclude]
        rows, features, history, excluded, unchanged = self._readers(
            engine, [str(u).strip() for u in user_ids], readers or {}, extra_reads or {}, extra_excluded or {}
        )
        if blocked:
            lists = [self.item_indices(blocked.get(str(u).strip(), ()), strict=False) for u in user_ids]
            excluded = binary_union(excluded, item_rows(lists, self.bundle.n_items))
        per_reader = rules if isinstance(rules, list) else [rules or self.ranker.rules] * len(rows)
        ids = np.full((len(rows), k), -1, dtype=np.int64)
        best = np.full((len(rows), k), -np.inf, dtype=np.float32)
        rest = np.arange(len(rows))
        if self.standing is not None and exclude == "all":
            answered = self._rank_from_standing(
                engine, rows, features, history, unchanged, excluded, per_reader, k
            )
            for position, (row_ids, row_best) in answered.items():
                ids[position], best[position] = row_ids, row_best
            rest = np.setdiff1d(rest, np.fromiter(answered, dtype=np.int64, count=len(answered)))
        if len(rest):
            scores, items = engine.scored_rows(
                rows[rest], features[rest], history[rest], most_excluded(excluded[rest])
            )
            ids[rest], best[rest] = self._rank_by_rules(
                scores, items, excluded[rest], [per_reader[i] for i in rest], k
            )
        return ids, best

    def _rank_by_rules(self, scores, items, excluded, per_reader: list[ListRules], k: int):
        """The one ranking path for a block of readers; readers asking for the same rules ranked together."""
        ids = np.full((len(scores), k), -1, dtype=np.int64)
        best = np.full((len(scores), k), -np.inf, dtype=np.float32)
        for group_rules in set(per_reader):
            group = np.flatnonzero([r == group_rules for r in per_reader])
            group_items = None if items is None else items[group]
            ids[group], best[group] = Ranker(self.catalog, group_rules).top_k(
                scores[group], excluded[group], k, group_items
            )
        return ids, best

    def keep_standing_lists(self, depth: int, capacity: int) -> None:
        """Serve known readers whose history is unchanged from standing lists of `depth` books, kept for
        up to `capacity` readers (`pipeline.serving.standing`); depth 0 turns them off."""
        self.standing = StandingLists(depth, capacity) if depth > 0 else None

    def precompute_standing_lists(self, max_readers: int, batch_size: int = 256) -> int:
        """Rank the standing lists of up to `max_readers` known readers, the most active first (the ones
        most likely to come back), in batches; returns how many were ranked."""
        if self.standing is None or max_readers <= 0:
            return 0
        engine = self.engines["all"]
        activity = np.diff(engine.history.indptr)[: self.bundle.n_users]
        order = np.argsort(-activity, kind="stable")[: min(max_readers, self.standing.capacity)]
        batch_size = bounded_batch(batch_size, self.bundle.n_items)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            self._standing_lists(
                engine, rows, engine.user_features[torch.as_tensor(rows)], engine.history[rows]
            )
        return len(order)

    def _standing_lists(self, engine, rows, features, history) -> tuple[np.ndarray, np.ndarray]:
        """Rank and keep the standing lists of model `rows` (their history is the bundle's)."""
        seen = engine.seen[rows]
        scores, items = engine.scored_rows(rows, features, history, most_excluded(seen))
        top_items, top_scores = self.plain_ranker.top_k(scores, seen, self.standing.depth, items)
        self.standing.put(rows, top_items, top_scores)
        return top_items, top_scores

    def _rank_from_standing(
        self, engine, rows, features, history, unchanged, excluded, per_reader, k
    ) -> dict:
        """{position: (ids, scores)} for the readers whose list their standing list decides (see
        `pipeline.serving.standing`); standing lists missing for such readers are ranked and kept first."""
        eligible = np.flatnonzero(unchanged)
        if not len(eligible):
            return {}
        found, items, scores, complete = self.standing.get(rows[eligible])
        missing = np.flatnonzero(~found)
        if len(missing):
            at = eligible[missing]
            items[missing], scores[missing] = self._standing_lists(
                engine, rows[at], features[at], history[at]
            )
            complete[missing] = items[missing, -1] < 0
        ids, best = self._rank_by_rules(
            scores, items, excluded[eligible], [per_reader[i] for i in eligible], k
        )
        decided = complete | ((ids >= 0).sum(axis=1) >= k)
        return {int(eligible[i]): (ids[i], best[i]) for i in np.flatnonzero(decided)}

    def _readers(self, engine, user_ids, readers, extra_reads, extra_excluded):
        """Model rows, side-feature ids, history rows, exclusion rows and whether each reader is a known one
        represented as in the bundle (nothing read since training), for a batch of readers.

        Known readers bring their row of the bundle's exclusion; for everyone, books read since
        training (`extra_reads`, folded into the history), `extra_excluded` and an unknown reader's
        liked books are excluded too, with every other edition of them."""
        unknown = self.bundle.n_users
        rows = np.array([self.user_index.get(u, unknown) for u in user_ids], dtype=np.int64)
        features = engine.user_features[torch.as_tensor(rows)]
        added, also_excluded = [], []
        for row, user_id in zip(rows, user_ids, strict=True):
            extra = self.item_indices(extra_reads.get(user_id, ()), strict=False)
            if row == unknown:
                reader = readers.get(user_id, Reader())
                extra = np.concatenate([self.item_indices(reader.liked_isbns, strict=False), extra])
            added.append(extra)
            also_excluded.append(self.item_indices(extra_excluded.get(user_id, ()), strict=False))
        cold = np.flatnonzero(rows == unknown)
        if len(cold):
            features = features.clone()
            features[torch.as_tensor(cold)] = self.encode_readers(
                [readers.get(user_ids[i], Reader()) for i in cold]
            )
        added_rows = item_rows(added, self.bundle.n_items)
        history = binary_union(engine.history[rows], added_rows)
        unchanged = (rows != unknown) & (np.diff(added_rows.indptr) == 0)  # represented as in the bundle
        known = binary_union(added_rows, item_rows(also_excluded, self.bundle.n_items))
        if not known.nnz:  # nothing new about these readers: their rows of the bundle say it all
            return rows, features, history, engine.seen[rows], unchanged
        excluded = binary_union(engine.seen[rows], self.catalog.with_editions(known))
        return rows, features, history, excluded, unchanged

    def book_records(self, ids: np.ndarray, scores: np.ndarray) -> list[dict]:
        """One ranked list as dicts (rank, isbn, score and the book's details), for JSON answers."""
        return [
            {"rank": rank, "score": float(score), **{k: v[int(item)] for k, v in self._details.items()}}
            for rank, (item, score) in enumerate(zip(ids, scores, strict=True), start=1)
            if item >= 0
        ]

    def recommend_new_reader(self, reader: Reader, k: int = 10, blocked: Iterable[str] = ()) -> pd.DataFrame:
        new = "<new reader>"
        return self.recommend([new], k, readers={new: reader}, blocked={new: blocked}).drop(columns="user_id")

    def similar_books(
        self, isbns: list[str], k: int = 10, rules: ListRules | None = None, blocked: Iterable[str] = ()
    ) -> pd.DataFrame:
        """Nearest books by cosine similarity of the model's item vectors: isbn, rank, similar_isbn, score."""
        k = self.validate_k(k)
        queries = self.item_indices(isbns)
        ids, best = self.rank_similar(queries, k, rules, blocked)
        return self._frame("isbn", [str(i).strip().upper() for i in isbns], ids, best, "similar_isbn")

    def rank_similar(
        self, queries: np.ndarray, k: int, rules: ListRules | None = None, blocked: Iterable[str] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """Similar books through the one ranking path: never an edition of the query, one edition per
        work, the author cap, never a `blocked` ISBN."""
        k = self.validate_k(k)
        ranker = Ranker(self.catalog, rules or self.ranker.rules)
        blocked_items = self.item_indices(blocked, strict=False) if blocked else None
        return self.engines["all"].similar_items(queries, k, ranker, blocked_items)

    def because_you_read(self, user_id: str, isbn: str, extra_reads: Iterable[str] = ()) -> str | None:
        """The book in the reader's history most similar to `isbn` (the reason shown next to it)."""
        history = np.unique(
            np.concatenate([self.read_items(user_id), self.item_indices(extra_reads, strict=False)])
        )
        if len(history) == 0:
            return None
        similarity = self.similarity.to(self.item_indices([isbn])[0], history)
        return str(self.items.iloc[int(history[int(np.argmax(similarity))])]["isbn"])

    def _frame(
        self, key: str, keys: list[str], ids: np.ndarray, scores: np.ndarray, item_column: str
    ) -> pd.DataFrame:
        valid = ids >= 0
        repeat = valid.sum(axis=1)
        isbns = self.isbns[ids[valid]]
        ranks = np.concatenate([np.arange(1, n + 1) for n in repeat]) if len(repeat) else np.empty(0, int)
        return pd.DataFrame(
            {
                key: np.repeat(np.asarray(keys, dtype=object), repeat),
                "rank": ranks.astype(np.int64),
                item_column: isbns.astype(str),
                "score": scores[valid].astype(np.float64),
            }
        )
