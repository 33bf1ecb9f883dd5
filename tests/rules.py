"""An independent check of what no served list may contain, read straight from the processed tables
(not from the model bundle or the ranking code it checks)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd


class Catalog:
    def __init__(self, root: Path):
        processed = Path(root) / "data" / "processed"
        users = pd.read_parquet(processed / "users.parquet").set_index("user_idx")["user_id"].astype(str)
        items = pd.read_parquet(processed / "items.parquet").set_index("item_idx")
        self.work = dict(zip(items["isbn"], items["work_idx"], strict=True))
        self.author = dict(zip(items["isbn"], items["author_idx"], strict=True))
        known = pd.concat(
            [
                pd.read_parquet(processed / f"{name}.parquet")
                for name in ("train", "validation", "test", "dislikes")
            ]
        )
        self.dislikes = pd.read_parquet(processed / "dislikes.parquet")
        isbn = items["isbn"]
        self.known_works: dict[str, set[int]] = {}
        for user_idx, item_idx in zip(known["user_idx"], known["item_idx"], strict=True):
            self.known_works.setdefault(users[user_idx], set()).add(int(items.loc[item_idx, "work_idx"]))
        self.disliked = {
            (users[u], isbn[i])
            for u, i in zip(self.dislikes["user_idx"], self.dislikes["item_idx"], strict=True)
        }

    def violations(self, user_id: str, isbns: list[str], max_per_author: int | None) -> list[str]:
        """What is wrong with one reader's list: a known book (any split or a dislike) or another edition
        of one, two editions of one work, more than `max_per_author` books by one author."""
        problems = []
        works = [self.work[i] for i in isbns]
        for isbn, work in zip(isbns, works, strict=True):
            if work in self.known_works.get(str(user_id), set()):
                problems.append(
                    f"{user_id}: {isbn} is (an edition of) a book the reader is known to have read or rated"
                )
        for work, n in Counter(works).items():
            if n > 1:
                problems.append(f"{user_id}: {n} editions of work {work}")
        if max_per_author is not None:
            for author, n in Counter(self.author[i] for i in isbns if self.author[i] >= 0).items():
                if n > max_per_author:
                    problems.append(f"{user_id}: {n} books by author {author} (cap {max_per_author})")
        return problems

    def similar_violations(self, query: str, isbns: list[str], max_per_author: int | None) -> list[str]:
        problems = [
            f"{query}: {i} is an edition of the query" for i in isbns if self.work[i] == self.work[query]
        ]
        return problems + self.violations(f"similar to {query}", isbns, max_per_author)
