"""`BookRecommender`: raw Book-Crossing ids in, ranked ISBNs out. The one serving core behind the MLflow
pyfunc, the REST API and the dashboard.

Known readers are scored from their id, side features and everything they are known to have read;
unknown readers by the cold-start path (age and location, plus any liked books folded into the
history); new interactions are folded in the same way, without retraining.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from pipeline.data.locations import split_location
from pipeline.model.recommender import NCFRecommender, Recommender, history_rows, top_k
from pipeline.storage.bundle import Bundle, load_bundle

EXCLUDE_MODES = ("all", "train")
MAX_K = 200


def other_editions(items: pd.DataFrame) -> sp.csr_matrix:
    """(items x items) links between different ISBNs of the same book: same author and the same title
    once edition notes in parentheses, case and punctuation are set aside."""

    def key(values: pd.Series) -> pd.Series:
        return (
            values.fillna("")
            .str.lower()
            .str.replace(r"\([^)]*\)", " ", regex=True)
            .str.replace(r"[^\w]+", " ", regex=True)
            .str.split()
            .str.join(" ")
        )

    work = key(items["title"]) + "|" + key(items["author"])
    work = work.where(key(items["title"]) != "")
    codes, _ = pd.factorize(work)  # -1 for books without a title
    rows, cols = [], []
    for members in pd.Series(np.arange(len(items))).groupby(codes).groups.values():
        members = np.asarray(members)
        if len(members) > 1 and codes[members[0]] >= 0:
            rows.append(np.repeat(members, len(members)))
            cols.append(np.tile(members, len(members)))
    if not rows:
        return sp.csr_matrix((len(items), len(items)), dtype=np.int8)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    return sp.csr_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(len(items), len(items)))


def ann_index(vectors: np.ndarray):
    """An HNSW index (hnswlib) over unit vectors: inner product is cosine similarity. Used for similar
    books once the catalog outgrows exact search (the `serve.ann_threshold` of params.yaml)."""
    import hnswlib

    index = hnswlib.Index(space="ip", dim=vectors.shape[1])
    index.init_index(max_elements=len(vectors), ef_construction=200, M=16, random_seed=42)
    index.add_items(vectors, np.arange(len(vectors)), num_threads=1)
    index.set_ef(200)
    return index


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


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
        # Plain dicts: a lookup on the hot path costs a fraction of a microsecond.
        self.user_index = {str(u): i for i, u in enumerate(bundle.users["user_id"])}
        self.item_index = {str(isbn): i for i, isbn in enumerate(bundle.items["isbn"])}
        self.isbns = bundle.items["isbn"].astype(str).to_numpy(dtype=object)
        editions = other_editions(bundle.items)
        self._editions = {
            item: editions.indices[editions.indptr[item] : editions.indptr[item + 1]]
            for item in np.flatnonzero(np.diff(editions.indptr))
        }
        self._records = [
            {
                "isbn": str(row.isbn),
                "title": _text(row.title),
                "author": _text(row.author),
                "year": None if pd.isna(row.year) else int(row.year),
                "publisher": _text(row.publisher),
                "cover_url": _text(row.image_url_m),
            }
            for row in bundle.items.itertuples(index=False)
        ]
        user_features = bundle.user_feature_tensor()
        item_features = bundle.item_feature_tensor()
        everything = bundle.matrix(("train", "validation", "test"))
        train = bundle.matrix(("train",))
        # "all": the representation and the exclusion use every book the reader is known to have read.
        # "train": exactly the evaluation protocol (history = train, excluded = train + validation).
        self.engines = {
            "all": NCFRecommender(
                self.model, user_features, item_features, everything, everything, bundle.neighbourhood
            ),
            "train": NCFRecommender(
                self.model,
                user_features,
                item_features,
                train,
                bundle.matrix(("train", "validation")),
                bundle.neighbourhood,
            ),
        }
        self.engines["train"]._cache = self.engines["all"].item_cache()  # same weights, one item cache
        self._item_vectors = self.engines["all"].item_vectors()
        self._normalised = self._item_vectors / np.maximum(
            np.linalg.norm(self._item_vectors, axis=1, keepdims=True), 1e-12
        ).astype(np.float32)
        threshold = bundle.metadata.get("ann_threshold", 100_000)
        self._ann = ann_index(self._normalised) if bundle.n_items > threshold else None

    @classmethod
    def from_folder(cls, folder) -> BookRecommender:
        return cls(load_bundle(folder))

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
            self._popularity = np.bincount(
                self.bundle.interactions["item_idx"], minlength=self.bundle.n_items
            )
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
        counts = np.bincount(self.bundle.interactions["user_idx"], minlength=self.bundle.n_users)
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

    def _features_for(self, readers: list[Reader]) -> torch.Tensor:
        table = pd.DataFrame({"age": [r.age for r in readers], "location": [r.location for r in readers]})
        places = split_location(table["location"].astype("string"))
        ages = pd.to_numeric(table["age"], errors="coerce")
        low, high = self.bundle.metadata.get("age_range", (5, 100))
        places["age"] = ages.where(ages.between(low, high))
        encoded = self.bundle.vocabulary.encode_users(places)
        return torch.from_numpy(
            encoded[["age_bucket", "country", "region"]].to_numpy(dtype=np.int64, copy=True)
        )

    def score_readers(
        self, user_rows: np.ndarray, features: torch.Tensor, histories: list[np.ndarray], mode: str = "all"
    ) -> np.ndarray:
        """(B, n_items) scores for readers given as model rows (n_users = unknown), side-feature ids and
        histories (item indices): the primitive every recommendation goes through."""
        engine = self.engines[mode]
        with torch.inference_mode():
            users = torch.as_tensor(user_rows, dtype=torch.long)
            terms = self.model.history_terms_from_lists(histories)
            vectors = self.model.user_vectors(users, features, terms)
            scores = self.model.score_all_items(vectors, engine.item_cache()).numpy()
        if self.bundle.neighbourhood is None:
            return scores
        return self.bundle.neighbourhood.blend(scores, history_rows(histories, self.bundle.n_items))

    def recommend(
        self,
        user_ids: list[str],
        k: int = 10,
        exclude: str = "all",
        readers: Mapping[str, Reader] | None = None,
        extra_reads: Mapping[str, Iterable[str]] | None = None,
        extra_excluded: Mapping[str, Iterable[str]] | None = None,
    ) -> pd.DataFrame:
        """Top-k books per reader, one row per recommendation: user_id, rank, isbn, score.

        Known readers get their model representation; `extra_reads` (books liked since training) are
        folded into their history, and they and `extra_excluded` (say, books read and disliked) are
        never recommended. Unknown readers get the cold-start path from `readers[user_id]` (age,
        location, liked books), or from nothing at all.
        """
        ids, best = self.rank(user_ids, k, exclude, readers, extra_reads, extra_excluded)
        return self._frame("user_id", [str(u).strip() for u in user_ids], ids, best, "isbn")

    def rank(
        self,
        user_ids: list[str],
        k: int = 10,
        exclude: str = "all",
        readers: Mapping[str, Reader] | None = None,
        extra_reads: Mapping[str, Iterable[str]] | None = None,
        extra_excluded: Mapping[str, Iterable[str]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`recommend` as arrays: item indices (-1 pads) and scores, one row per reader."""
        k = self.validate_k(k)
        if exclude not in EXCLUDE_MODES:
            raise ValueError(f"exclude must be one of {', '.join(EXCLUDE_MODES)}, not {exclude!r}")
        engine = self.engines[exclude]
        readers = readers or {}
        extra_reads = extra_reads or {}
        extra_excluded = extra_excluded or {}
        rows, features, histories, excluded = [], [], [], []
        unknown = np.int64(self.bundle.n_users)
        for user_id in user_ids:
            user_id = str(user_id).strip()
            index = self.known_user(user_id)
            extra = self.item_indices(extra_reads.get(user_id, ()), strict=False)
            also_excluded = self.item_indices(extra_excluded.get(user_id, ()), strict=False)
            if index is not None:
                history = engine.history.indices[
                    engine.history.indptr[index] : engine.history.indptr[index + 1]
                ]
                seen = engine.seen.indices[engine.seen.indptr[index] : engine.seen.indptr[index + 1]]
                rows.append(index)
                features.append(engine.user_features[index])
            else:
                reader = readers.get(user_id, Reader())
                liked = self.item_indices(reader.liked_isbns, strict=False)
                history, seen = liked, liked
                rows.append(unknown)
                features.append(self._features_for([reader])[0])
            histories.append(np.unique(np.concatenate([history, extra]).astype(np.int64)))
            known = np.concatenate([seen, extra, also_excluded]).astype(np.int64)
            if exclude == "all":  # a reader who read one edition of a book has read the book
                linked = [self._editions[item] for item in known.tolist() if item in self._editions]
                known = np.concatenate([known, *linked])
            excluded.append(np.unique(known))
        if not rows:
            return np.empty((0, k), dtype=np.int64), np.empty((0, k), dtype=np.float32)
        scores = self.score_readers(np.asarray(rows), torch.stack(features), histories, exclude)
        for row, items in enumerate(excluded):
            scores[row, items] = -np.inf
        return top_k(scores, k)

    def book_records(self, ids: np.ndarray, scores: np.ndarray) -> list[dict]:
        """One ranked list as dicts (rank, isbn, score and the book's details), for JSON answers."""
        return [
            {"rank": rank, "score": float(score), **self._records[int(item)]}
            for rank, (item, score) in enumerate(zip(ids, scores, strict=True), start=1)
            if item >= 0
        ]

    def encode_readers(self, readers: list[Reader]) -> torch.Tensor:
        return self._features_for(readers)

    def recommend_new_reader(self, reader: Reader, k: int = 10) -> pd.DataFrame:
        return self.recommend(["<new reader>"], k, readers={"<new reader>": reader}).drop(columns="user_id")

    def similar_books(self, isbns: list[str], k: int = 10) -> pd.DataFrame:
        """Nearest books by cosine similarity of the model's item vectors: isbn, rank, similar_isbn, score."""
        k = self.validate_k(k)
        queries = self.item_indices(isbns)
        ids, best = self.rank_similar(queries, k)
        return self._frame("isbn", [str(i).strip().upper() for i in isbns], ids, best, "similar_isbn")

    def rank_similar(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = self.validate_k(k)
        if self._ann is not None:
            labels, distances = self._ann.knn_query(
                self._normalised[queries], k=min(k + 1, self.bundle.n_items)
            )
            ids = np.full((len(queries), k), -1, dtype=np.int64)
            scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
            for row, query in enumerate(queries):
                keep = labels[row] != query  # a book is never its own neighbour
                found = labels[row][keep][:k]
                ids[row, : len(found)] = found
                scores[row, : len(found)] = 1.0 - distances[row][keep][:k]
            return ids, scores
        similarity = self._normalised[queries] @ self._normalised.T
        similarity[np.arange(len(queries)), queries] = -np.inf
        return top_k(similarity, k)

    def because_you_read(self, user_id: str, isbn: str, extra_reads: Iterable[str] = ()) -> str | None:
        """The book in the reader's history most similar to `isbn` (the reason shown next to it)."""
        history = np.unique(
            np.concatenate([self.read_items(user_id), self.item_indices(extra_reads, strict=False)])
        )
        if len(history) == 0:
            return None
        target = self.item_indices([isbn])[0]
        similarity = self._normalised[history] @ self._normalised[target]
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


class RemappedRecommender(Recommender):
    """A served model scored in another id space (a newer split of the data): raw User-IDs and ISBNs are
    mapped to the model's rows; books it does not know score -inf; readers it does not know take the
    cold-start path. Lets the promotion gate measure the production model on the candidate's split."""

    name = "registered"

    def __init__(
        self, served: BookRecommender, users: pd.DataFrame, items: pd.DataFrame, history: sp.csr_matrix
    ):
        self.served = served
        self.history = history.tocsr()
        self.seen = self.history
        self.raw_user_ids = users.sort_values("user_idx")["user_id"].astype(str).to_numpy()
        self.user_frame = users.sort_values("user_idx").reset_index(drop=True)
        old_items = served.item_index
        isbns = items.sort_values("item_idx")["isbn"].astype(str)
        self.old_of_new = np.array([old_items.get(isbn, -1) for isbn in isbns], dtype=np.int64)

    def fit(self, train):
        raise NotImplementedError

    def score_users(self, users: np.ndarray) -> np.ndarray:
        rows, features, histories = [], [], []
        unknown = np.int64(self.served.bundle.n_users)
        for user in users:
            raw = self.raw_user_ids[user]
            index = self.served.known_user(raw)
            new_items = self.history.indices[self.history.indptr[user] : self.history.indptr[user + 1]]
            old_items = self.old_of_new[new_items]
            histories.append(np.unique(old_items[old_items >= 0]))
            if index is not None:
                rows.append(index)
                features.append(self.served.engines["all"].user_features[index])
            else:
                person = self.user_frame.iloc[user]
                location = ", ".join(str(person.get(c) or "") for c in ("city", "region", "country"))
                rows.append(unknown)
                features.append(
                    self.served.encode_readers([Reader(age=person.get("age"), location=location)])[0]
                )
        old_scores = self.served.score_readers(np.asarray(rows), torch.stack(features), histories)
        scores = np.full((len(users), len(self.old_of_new)), -np.inf, dtype=np.float32)
        known = self.old_of_new >= 0
        scores[:, known] = old_scores[:, self.old_of_new[known]]
        return scores
