"""Request-time rules for versions registered before them.

A registered version runs the code it was trained with (`pyfunc.own_code`). Versions registered
before request-time rules (a request's exclude list, books marked unavailable) rank without a
`blocked` argument; `with_request_rules` wraps such a version so that every caller can pass one: it
ranks `len(blocked)` deeper and drops the blocked books, so lists keep their length and their rules
(a subset of a list that obeys one edition per work and the author cap obeys them too). Newer
versions apply `blocked` inside the one ranking path and are returned as they are.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping

import numpy as np


def with_request_rules(recommender):
    if "blocked" in inspect.signature(recommender.rank).parameters:
        return recommender
    return BlockedAfterRanking(recommender)


def _drop(ids: np.ndarray, scores: np.ndarray, blocked: list[set[int]], k: int):
    out_ids = np.full((len(ids), k), -1, dtype=np.int64)
    out_scores = np.full((len(ids), k), -np.inf, dtype=np.float32)
    for row, (row_ids, row_scores) in enumerate(zip(ids, scores, strict=True)):
        keep = [i for i, item in enumerate(row_ids) if item >= 0 and int(item) not in blocked[row]][:k]
        out_ids[row, : len(keep)] = row_ids[keep]
        out_scores[row, : len(keep)] = row_scores[keep]
    return out_ids, out_scores


class BlockedAfterRanking:
    """An older version's recommender, with `blocked` applied after ranking deeper."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def _blocked_items(self, lists: list[Iterable[str]]) -> list[set[int]]:
        return [set(self._inner.item_indices(list(isbns), strict=False).tolist()) for isbns in lists]

    def rank(
        self,
        user_ids: list[str],
        k: int = 10,
        exclude: str = "all",
        readers=None,
        extra_reads=None,
        extra_excluded=None,
        rules=None,
        blocked: Mapping[str, Iterable[str]] | None = None,
    ):
        lists = [tuple((blocked or {}).get(str(u).strip(), ())) for u in user_ids]
        depth = k + max((len(b) for b in lists), default=0)
        ids, scores = self._inner.rank(user_ids, depth, exclude, readers, extra_reads, extra_excluded, rules)
        return _drop(ids, scores, self._blocked_items(lists), k) if depth > k else (ids, scores)

    def rank_similar(self, queries: np.ndarray, k: int, rules=None, blocked: Iterable[str] = ()):
        blocked = tuple(blocked)
        ids, scores = self._inner.rank_similar(queries, k + len(blocked), rules)
        return _drop(ids, scores, self._blocked_items([blocked] * len(ids)), k) if blocked else (ids, scores)

    def recommend(
        self,
        user_ids,
        k=10,
        exclude="all",
        readers=None,
        extra_reads=None,
        extra_excluded=None,
        rules=None,
        blocked=None,
    ):
        ids, best = self.rank(user_ids, k, exclude, readers, extra_reads, extra_excluded, rules, blocked)
        return self._inner._frame("user_id", [str(u).strip() for u in user_ids], ids, best, "isbn")

    def recommend_new_reader(self, reader, k: int = 10, blocked: Iterable[str] = ()):
        new = "<new reader>"
        return self.recommend([new], k, readers={new: reader}, blocked={new: blocked}).drop(columns="user_id")

    def similar_books(self, isbns: list[str], k: int = 10, rules=None, blocked: Iterable[str] = ()):
        ids, best = self.rank_similar(self._inner.item_indices(isbns), k, rules, blocked)
        return self._inner._frame("isbn", [str(i).strip().upper() for i in isbns], ids, best, "similar_isbn")
