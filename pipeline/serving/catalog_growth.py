"""A catalog that grows between trainings: the books added to the serving store, served at once by every
service (the API, the dashboard, the MLflow pyfunc) through the same `BookRecommender`.

`grow` applies the pure functions of `pipeline.model.new_books` to a loaded version: each added book
the version does not know gets its rows (side-feature vectors, or its work's learned vectors for a new
edition, folded in from the known readers who rated it), appended to the model, the neighbourhood
term, the catalog (its work and author by the catalog's work rule) and the item table. The result is
a `BookRecommender` over the grown bundle, so search, similar books, recommendations, every list rule,
standing lists and two-stage retrieval see the new books exactly as they see trained ones.

`CatalogGrowth` rereads the store every `serve.rules_refresh_seconds`; new or changed books are served
from the next refresh on, and the ratings they got are folded in at most every
`serve.fold_in_seconds` (each fold-in is a new grown version of the catalog, whose standing lists are
ranked again).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from pipeline.config import ConfigError, find_root, load_params
from pipeline.data.catalog import extended_catalog_columns
from pipeline.data.features import ITEM_FEATURES
from pipeline.data.protocol import is_positive
from pipeline.model.new_books import (
    CoReads,
    FoldInMap,
    fit_fold_in,
    grown_model,
    grown_neighbourhood,
    new_book_rows,
    reader_aggregate,
)
from pipeline.storage.added_books import added_books_frame, ratings_of_added_books
from pipeline.storage.feedback import FeedbackStore, feedback_url

log = logging.getLogger("bookrec.serving")
NEIGHBOURHOOD_DEFAULTS = {"k1": 1.2, "b": 0.75, "neighbours": 20}


@dataclass(frozen=True)
class Arrivals:
    """The added books (the interim books layout, oldest first) and their ratings (user_id, isbn, rating)."""

    books: pd.DataFrame
    ratings: pd.DataFrame

    @classmethod
    def empty(cls) -> Arrivals:
        return cls(pd.DataFrame(columns=["isbn"]), pd.DataFrame(columns=["user_id", "isbn", "rating"]))

    @property
    def books_key(self) -> tuple:
        return tuple(pd.util.hash_pandas_object(self.books, index=False))

    @property
    def ratings_key(self) -> tuple:
        return tuple(pd.util.hash_pandas_object(self.ratings, index=False))


def read_arrivals(store) -> Arrivals:
    return Arrivals(added_books_frame(store), ratings_of_added_books(store))


@dataclass(frozen=True)
class _Learned:
    """What a version's growth needs of its training, computed once per loaded version."""

    fold_in: FoldInMap
    co_reads: CoReads | None


_LEARNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LEARNING = threading.Lock()


def learned(base) -> _Learned:
    """The fold-in map and co-read weighting of a loaded version (fitted once, in the background
    when the version loads: `CatalogGrowth.apply`)."""
    with _LEARNING:
        if base not in _LEARNED:
            _LEARNED[base] = _learn(base)
        return _LEARNED[base]


def _learn(base) -> _Learned:
    """Fit the fold-in map on the trained catalog; the co-read weighting from the training matrix."""
    bundle, model = base.bundle, base.bundle.model
    train = bundle.matrix(("train",))
    engine = base.engines["train"]
    users = np.arange(bundle.n_users)
    with torch.inference_mode():
        vectors = model.user_vectors(
            torch.from_numpy(users), engine.user_features[users], model.history_terms(train)
        )
    co_reads = None
    if bundle.neighbourhood is not None:
        options = NEIGHBOURHOOD_DEFAULTS | bundle.metadata.get("train_params", {}).get("neighbourhood", {})
        co_reads = CoReads.of(
            train, bundle.neighbourhood.similarity, options["k1"], options["b"], options["neighbours"]
        )
    return _Learned(fit_fold_in(model, vectors, train.T.tocsr()), co_reads)


def _readers(base, books: pd.DataFrame, ratings: pd.DataFrame) -> sp.csr_matrix:
    """(M, n_users) the known readers who liked each new book (a reader the model does not know has
    neither a learned vector nor co-reads)."""
    liked = ratings[is_positive(ratings["rating"], base.min_explicit_rating)]
    rows = liked["user_id"].astype(str).map(base.user_index)
    columns = liked["isbn"].map(pd.Series(np.arange(len(books)), index=books["isbn"].to_numpy()))
    keep = rows.notna() & columns.notna()
    return sp.csr_matrix(
        (np.ones(int(keep.sum()), np.float32), (columns[keep].astype(int), rows[keep].astype(int))),
        shape=(len(books), base.bundle.n_users),
    )


def _editions_of(base, catalog_rows: pd.DataFrame) -> np.ndarray:
    """Per new book, the most-read trained edition of its work (-1 for a new work)."""
    work = base.catalog.work
    order = np.lexsort((np.arange(len(work)), -base.popularity))  # most read first, then catalog order
    first = pd.Series(order, index=work[order]).groupby(level=0).first()
    return catalog_rows["work_idx"].map(first).fillna(-1).to_numpy(dtype=np.int64)


def grow(base, arrivals: Arrivals):
    """`base` (a loaded version's `BookRecommender`) with the added books it does not know appended; itself
    when there are none."""
    known = np.fromiter(
        (isbn in base.item_index for isbn in arrivals.books["isbn"]), bool, len(arrivals.books)
    )
    books = arrivals.books[~known].reset_index(drop=True)
    if books.empty:
        return base
    bundle, model = base.bundle, base.bundle.model
    state = learned(base)
    catalog_rows = extended_catalog_columns(bundle.items, books)
    features = bundle.vocabulary.encode_items(books)[list(ITEM_FEATURES)].to_numpy(dtype=np.int64, copy=True)
    readers = _readers(base, books, arrivals.ratings)
    engine = base.engines["all"]
    raters = np.unique(readers.indices)
    with torch.inference_mode():
        vectors = model.user_vectors(
            torch.from_numpy(raters),
            engine.user_features[raters],
            model.history_terms(engine.history[raters]),
        )
    aggregate = reader_aggregate(vectors, readers[:, raters], model.config.history_alpha)
    editions_of = _editions_of(base, catalog_rows)
    rows = new_book_rows(
        model, bundle.item_feature_tensor(), state.fold_in, torch.from_numpy(features), aggregate, editions_of
    )
    n = bundle.n_items
    added = catalog_rows.assign(
        item_idx=np.arange(n, n + len(books), dtype=np.int32),
        **{f"{name}_id": rows.features[:, i].numpy() for i, name in enumerate(ITEM_FEATURES)},
    )
    items = pd.concat(
        [bundle.items, added[[c for c in bundle.items.columns if c in added]]], ignore_index=True
    )
    neighbourhood = bundle.neighbourhood
    if neighbourhood is not None and state.co_reads is not None:
        neighbourhood = grown_neighbourhood(neighbourhood, state.co_reads, readers, editions_of)
    grown = type(base)(
        dataclasses.replace(bundle, model=grown_model(model, rows), items=items, neighbourhood=neighbourhood)
    )
    if base.standing is not None:
        grown.keep_standing_lists(base.standing.depth, base.standing.capacity)
    grown.grown_from = base
    return grown


class CatalogGrowth:
    """Keeps the models of some holders (the API's production and challenger, the dashboard's) grown by
    the books added to the store; `current` does the same for one recommender (the pyfunc)."""

    def __init__(self, store, refresh_seconds: float = 2.0, fold_in_seconds: float = 60.0):
        self.store, self.refresh_seconds, self.fold_in_seconds = store, refresh_seconds, fold_in_seconds
        self.arrivals = Arrivals.empty()
        self.read_at = self.folded_at = -np.inf
        self.holders: list = []
        self._grown: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # base -> (arrivals, grown)
        self._lock = threading.RLock()
        self._stop = threading.Event()

    @classmethod
    def from_environment(cls) -> CatalogGrowth | None:
        """The growth of the store that `BOOKREC_FEEDBACK_URL` or `BOOKREC_ROOT` names (the pyfunc's
        way to find it), with that root's params; None when neither is set."""
        url, root = os.environ.get("BOOKREC_FEEDBACK_URL"), os.environ.get("BOOKREC_ROOT")
        if not (url or root):
            return None
        try:
            serve = load_params(find_root()).serve
            timing = (serve.rules_refresh_seconds, serve.fold_in_seconds)
        except ConfigError:  # a store named without a project: params.yaml's defaults
            timing = (2.0, 300.0)
        return cls(FeedbackStore(url or feedback_url(Path(root))), *timing)

    def follow(self, holder) -> None:
        """Serve `holder`'s versions grown: each version it loads, and the one it serves now."""
        previous = holder.prepare
        holder.prepare = lambda recommender: self.apply(previous(recommender))
        with self._lock:
            self.holders.append(holder)
            self._regrow(holder)

    def apply(self, recommender):
        """`recommender`'s version grown by the arrivals read last (one grown copy per version kept)."""
        base = getattr(recommender, "grown_from", recommender)
        if base not in _LEARNED and base not in self._grown:  # a version just loaded: be ready for books
            threading.Thread(
                target=self._learn_quietly, args=(base,), name="fold-in-fit", daemon=True
            ).start()
        with self._lock:
            arrivals = self.arrivals
            cached = self._grown.get(base)
            if cached is not None and cached[0] is arrivals:
                return cached[1]
            try:
                grown = grow(base, arrivals)
            except Exception:  # a version whose code cannot grow: it keeps serving its own catalog
                log.exception("could not add the new books to the served model")
                grown = base
            self._grown[base] = (arrivals, grown)
            return grown

    @staticmethod
    def _learn_quietly(base) -> None:
        try:
            learned(base)
        except Exception:  # a version whose code cannot grow: `apply` says so when books come
            log.debug("no fold-in map for this version", exc_info=True)

    def refresh(self) -> bool:
        """Reread the store; regrow the followed models if books changed, or if ratings of added books
        changed and the last fold-in is `fold_in_seconds` old. True if they were regrown."""
        arrivals = read_arrivals(self.store)
        with self._lock:
            self.read_at = time.monotonic()
            books_changed = arrivals.books_key != self.arrivals.books_key
            ratings_changed = arrivals.ratings_key != self.arrivals.ratings_key
            if not books_changed and not (
                ratings_changed and time.monotonic() - self.folded_at >= self.fold_in_seconds
            ):
                return False
            self.arrivals, self.folded_at = arrivals, time.monotonic()
            for holder in self.holders:
                self._regrow(holder)
        return True

    def _regrow(self, holder) -> None:
        served = holder.current
        if served is not None:
            holder.replace(served.version, self.apply(served.recommender))

    def current(self, recommender):
        """`recommender` grown by the store's books, reread when the last read is `refresh_seconds` old."""
        if time.monotonic() - self.read_at >= self.refresh_seconds:
            try:
                self.refresh()
            except Exception:  # the store is down: keep the books read last
                log.exception("could not reread the added books")
        return self.apply(recommender)

    def start(self) -> None:
        def poll():
            while not self._stop.wait(self.refresh_seconds):
                try:
                    self.refresh()
                except Exception:  # the store is down: keep serving the books read last
                    log.exception("could not reread the added books")

        threading.Thread(target=poll, name="catalog-growth", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
