"""Standing lists: each known reader's best books, ranked once and kept until the reader's history
changes (precomputed per-reader state).

A reader's standing list is the `depth` best books by the served score (the NCF + neighbourhood
blend, with their own representation) once the bundle's exclusion is applied (everything they are
known to have read or rated, and every other edition of it), best first, ties in catalog order.
Lists are ranked greedily in score order, so a list depends only on the books in score order until
K of them pass the exclusions and rules of the request. When a reader's standing list holds K books
that pass (the request's blocked books, its author cap), the list drawn from it is the one ranking
the whole catalog would give; when it does not (many books blocked, a large k), the reader is
ranked over the whole catalog. A reader who rated a book since training has another representation
and is always ranked in full.

Kept for `capacity` readers, the least recently used dropped first; safe to use from several
threads (the API's scoring thread and the warm-up thread).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class StandingLists:
    def __init__(self, depth: int, capacity: int):
        if depth < 1 or capacity < 1:
            raise ValueError(f"depth and capacity must be at least 1, not {depth} and {capacity}")
        self.depth, self.capacity = depth, capacity
        # reader row -> (items (depth,) int32, -1 pads; scores (depth,) float32; holds every eligible book)
        self._lists: OrderedDict[int, tuple[np.ndarray, np.ndarray, bool]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._lists)

    def __contains__(self, row: int) -> bool:
        return int(row) in self._lists

    def put(self, rows: np.ndarray, items: np.ndarray, scores: np.ndarray) -> None:
        """Keep the lists of model `rows`: `items` (B, depth) best first (-1 pads when fewer books are
        eligible, which means the list holds all of them) and their `scores`."""
        with self._lock:
            for row, row_items, row_scores in zip(rows, items, scores, strict=True):
                complete = bool(row_items[-1] < 0)
                self._lists[int(row)] = (row_items.astype(np.int32), row_scores.astype(np.float32), complete)
                self._lists.move_to_end(int(row))
            while len(self._lists) > self.capacity:
                self._lists.popitem(last=False)

    def get(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(found (B,) bool, items (B, depth) int64, scores (B, depth), complete (B,) bool) for model
        `rows`; rows not found have -1 items."""
        found = np.zeros(len(rows), dtype=bool)
        items = np.full((len(rows), self.depth), -1, dtype=np.int64)
        scores = np.full((len(rows), self.depth), -np.inf, dtype=np.float32)
        complete = np.zeros(len(rows), dtype=bool)
        with self._lock:
            for position, row in enumerate(rows):
                entry = self._lists.get(int(row))
                if entry is None:
                    continue
                self._lists.move_to_end(int(row))
                found[position] = True
                items[position], scores[position], complete[position] = entry
        return found, items, scores, complete
