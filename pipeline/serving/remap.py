"""A registered version scored in another id space, for the gate's re-measurement of production on a
challenger's (newer) split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipeline.model.recommender import Recommender
from pipeline.serving.service import BookRecommender, Reader, item_rows


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
        # the usual case (the model was trained on this split): its columns are already the split's
        self.same_books = len(self.old_of_new) == served.bundle.n_items and bool(
            (self.old_of_new == np.arange(len(self.old_of_new))).all()
        )

    def fit(self, train: sp.csr_matrix) -> RemappedRecommender:
        raise NotImplementedError

    def score_users(self, users: np.ndarray) -> np.ndarray:
        raw_ids = [str(self.raw_user_ids[user]) for user in users]
        readers, reads = {}, {}
        for user, raw in zip(users, raw_ids, strict=True):
            new_items = self.history.indices[self.history.indptr[user] : self.history.indptr[user + 1]]
            old_items = self.old_of_new[new_items]
            reads[raw] = self.served.isbns[old_items[old_items >= 0]].tolist()
            if self.served.known_user(raw) is None:
                person = self.user_frame.iloc[user]
                location = ", ".join(str(person.get(c) or "") for c in ("city", "region", "country"))
                readers[raw] = Reader(age=person.get("age"), location=location)
        engine = self.served.engines["train"]
        rows, features, *_ = self.served._readers(engine, raw_ids, readers, {}, {})
        # The served model knows these readers by the candidate's split: their history is exactly the
        # candidate's training rows (mapped to the served model's books), nothing the model stored.
        history = item_rows(
            [self.served.item_indices(reads[raw], strict=False) for raw in raw_ids],
            self.served.bundle.n_items,
        )
        old_scores = engine.score_rows(rows, features, history)
        if self.same_books:
            return old_scores
        scores = np.full((len(users), len(self.old_of_new)), -np.inf, dtype=np.float32)
        known = self.old_of_new >= 0
        scores[:, known] = old_scores[:, self.old_of_new[known]]
        return scores
