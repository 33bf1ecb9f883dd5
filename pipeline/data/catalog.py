"""The catalog's works and authors (pure): which ISBNs are editions of one book, and who wrote it.

Book-Crossing lists every edition of a book under its own ISBN ("Harry Potter and the Chamber of
Secrets (Book 2)" in hardcover and paperback). Two ISBNs are editions of one *work* when they have the
same author and the same title once case, punctuation and notes in parentheses are set aside; the
same title by different authors stays two works. The preprocess stage computes `work_idx` and
`author_idx` once per dataset version and stores them in items.parquet; everything else reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp


def normalise_name(values: pd.Series) -> pd.Series:
    """Lower case, every run of non-word characters one space; empty becomes missing."""
    text = values.astype("string").str.lower().str.replace(r"[^\w]+", " ", regex=True).str.strip()
    return text.where(text != "")


def normalise_title(values: pd.Series) -> pd.Series:
    """A title without its edition notes in parentheses ("(Book 2)", "(Paperback)"), then as a name."""
    return normalise_name(values.astype("string").str.replace(r"\([^)]*\)", " ", regex=True))


def _column(items: pd.DataFrame, name: str) -> pd.Series:
    """A text column of `items`, all missing when the table has none."""
    return items[name] if name in items else pd.Series(pd.NA, index=items.index, dtype="string")


def work_ids(items: pd.DataFrame) -> np.ndarray:
    """A dense work id per row of `items` (columns title, author), in order of first appearance.
    A book without a usable title is a work of its own."""
    key = normalise_title(_column(items, "title")) + "|" + normalise_name(_column(items, "author")).fillna("")
    codes, uniques = pd.factorize(key, use_na_sentinel=True)
    alone = codes < 0
    codes = codes.astype(np.int64)
    codes[alone] = len(uniques) + np.arange(int(alone.sum()))
    return pd.factorize(codes)[0].astype(np.int32)  # dense again, in order of first appearance


def author_ids(items: pd.DataFrame) -> np.ndarray:
    """A dense author id per row (normalised name), -1 where the author is unknown."""
    codes, _ = pd.factorize(normalise_name(_column(items, "author")), use_na_sentinel=True)
    return codes.astype(np.int32)


def with_catalog_columns(items: pd.DataFrame) -> pd.DataFrame:
    """`items` with `work_idx` and `author_idx` (what preprocess stores in items.parquet)."""
    return items.assign(work_idx=work_ids(items), author_idx=author_ids(items))


@dataclass(frozen=True)
class Catalog:
    """Per item (in item_idx order): its work and its author (-1 unknown)."""

    work: np.ndarray  # (n_items,) int
    author: np.ndarray  # (n_items,) int

    @classmethod
    def from_items(cls, items: pd.DataFrame) -> Catalog:
        """From an item_idx-ordered table that has the catalog columns (or the title and author to
        compute them from)."""
        if "work_idx" not in items or "author_idx" not in items:
            items = with_catalog_columns(items)
        return cls(items["work_idx"].to_numpy(np.int64), items["author_idx"].to_numpy(np.int64))

    @classmethod
    def of_distinct_items(cls, n_items: int) -> Catalog:
        """Every item its own work, no authors: a catalog that changes nothing in a list."""
        return cls(np.arange(n_items, dtype=np.int64), np.full(n_items, -1, dtype=np.int64))

    @property
    def n_items(self) -> int:
        return len(self.work)

    @cached_property
    def membership(self) -> sp.csr_matrix:
        """(items x works) 1 where an item is an edition of a work; built once (serving expands
        exclusions with it on every request)."""
        return sp.csr_matrix(
            (np.ones(self.n_items, dtype=np.float32), (np.arange(self.n_items), self.work)),
            shape=(self.n_items, int(self.work.max(initial=-1)) + 1),
        )

    def editions(self) -> sp.csr_matrix:
        """(items x items) 1 where two items are editions of one work (an item is its own edition)."""
        return (self.membership @ self.membership.T).tocsr()

    def with_editions(self, known: sp.csr_matrix) -> sp.csr_matrix:
        """Binary rows: every item of `known` and every other edition of it."""
        works = (sp.csr_matrix(known, dtype=np.float32) @ self.membership).tocsr()
        expanded = (works @ self.membership.T).tocsr()
        expanded.data[:] = 1.0
        expanded.eliminate_zeros()
        return expanded


def extended_catalog_columns(items: pd.DataFrame, added: pd.DataFrame) -> pd.DataFrame:
    """`added` books (title, author) with the `work_idx` and `author_idx` they take next to `items` (a
    table with the catalog columns): an added book whose work or author `items` has takes its id; the
    others get new ids after the largest, in order of first appearance, by the same rule."""
    both = pd.concat([items[["title", "author"]], added[["title", "author"]]], ignore_index=True)
    works, authors = work_ids(both), author_ids(both)
    old = len(items)
    known_work = dict(zip(works[:old], items["work_idx"].to_numpy(), strict=True))
    known_author = dict(zip(authors[:old], items["author_idx"].to_numpy(), strict=True))
    return added.assign(
        work_idx=_carried(works[old:], known_work, int(items["work_idx"].to_numpy().max(initial=-1)) + 1),
        author_idx=_carried(authors[old:], known_author, int(items["author_idx"].to_numpy().max(initial=-1)) + 1),
    )


def _carried(codes: np.ndarray, known: dict, start: int) -> np.ndarray:
    """Codes of the same factorisation mapped to their stored ids; unseen codes numbered from `start`
    (-1, an unknown author, stays -1)."""
    unseen = {code: start + i for i, code in enumerate(dict.fromkeys(c for c in codes if c >= 0 and c not in known))}
    mapped = [-1 if code < 0 else known.get(code, unseen.get(code)) for code in codes]
    return np.asarray(mapped, dtype=np.int32)
