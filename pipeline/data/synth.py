"""A Book-Crossing look-alike at any scale (pure): fit a profile of the real dump, sample from it.

The profile holds the real dump at 1x: every reader's raw Location and Age and activity (how many
books they rated) with their own rating values, every book's raw title, author, year, publisher and
cover URLs, and every rated ISBN's popularity (how many readers rated it), including the ISBNs the
catalog does not list. Scale N is `ceil(N)` *copies* of that population: each full copy holds every
real reader and book once (so the degree, age, location and catalog distributions are the real
ones exactly), the fractional last copy a random subset without replacement. Every copy gets new
ids: User-IDs count up from 1 across the copies, ISBNs are a bijective scramble of (copy, book) with
a correct ISBN-10 check digit, so no two copies share an id.

The ratings are new, drawn Chung-Lu style: a reader of activity d rates d distinct books, each
drawn with probability proportional to its real popularity, so readers-per-book and books-per-reader
follow the real distributions in expectation. For collaborative signal each copy's readers and
books are split at random into taste clusters; a share of each reader's draws stays inside their
cluster (the rest, and whatever a cluster cannot supply without repeats, comes from every copy).
A rating's value is drawn from the same reader's real rating values, so the share of implicit (0)
ratings, the value frequencies and each reader's habit (implicit only, generous, harsh) carry over.

Preserved: the marginals named above, the joint of a reader's location, age, activity and rating
habit, the joint of a book's title, author, year, publisher and popularity, the share of ratings
whose ISBN is not in the catalog, readers and books with no ratings. Not preserved: which reader
rated which book (the real co-rating structure is replaced by the clusters), a book's own rating
mean, links between age or location and taste, the 315 ISBNs that collide when upper-cased (they are
dropped) and malformed rated ISBNs (every synthetic ISBN is well formed). In copies after the first,
titles, authors and publishers carry the suffix " [k]", so works, authors and publishers scale with
the catalog instead of one author writing N times as many books.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

BOOK_TEXT = ("Book-Title", "Book-Author", "Year-Of-Publication", "Publisher")
BOOK_URLS = ("Image-URL-S", "Image-URL-M", "Image-URL-L")
ISBN_SPACE = 10**9  # the nine digits before the check digit
_SCRAMBLE = (738_916_341, 271_828_183)  # multiplier coprime with 10: a bijection of 0..10**9-1


@dataclass(frozen=True)
class Profile:
    """The real dump, reduced to what sampling needs (1x size, held in memory)."""

    user_location: np.ndarray  # raw Location per real reader (object)
    user_age: np.ndarray  # raw Age text per real reader, "NULL" where the dump has NULL
    user_degree: np.ndarray  # ratings per real reader (int64)
    user_start: np.ndarray  # where the reader's values start in `rating_values`
    rating_values: np.ndarray  # every real rating value (int8), grouped by reader
    books: pd.DataFrame  # the catalog's raw text columns, one row per distinct ISBN
    item_degree: np.ndarray  # readers per rated or listed ISBN (int64)
    item_book: np.ndarray  # row in `books`, -1 for an ISBN the catalog does not list

    @property
    def n_users(self) -> int:
        return len(self.user_degree)

    @property
    def n_items(self) -> int:
        return len(self.item_degree)


def fit_profile(ratings: pd.DataFrame, users: pd.DataFrame, books: pd.DataFrame) -> Profile:
    """`ratings`: clean (user_id, isbn, rating) as ingest writes them; `users`, `books`: the raw
    text frames (RAW_COLUMNS), so the output repeats the dump's own strings and quirks."""
    users = users.assign(uid=users["User-ID"].str.strip()).drop_duplicates("uid")
    books = books.assign(isbn=books["ISBN"].str.strip().str.upper()).drop_duplicates("isbn")
    ratings = ratings[ratings["user_id"].isin(users["uid"])]
    user_pos = pd.Index(users["uid"]).get_indexer(ratings["user_id"])
    order = np.argsort(user_pos, kind="stable")
    user_degree = np.bincount(user_pos, minlength=len(users)).astype(np.int64)
    item_isbns = pd.Index(books["isbn"]).append(pd.Index(ratings["isbn"].unique())).unique()
    item_degree = np.bincount(item_isbns.get_indexer(ratings["isbn"]), minlength=len(item_isbns))
    item_book = pd.Index(books["isbn"]).get_indexer(item_isbns)
    return Profile(
        user_location=users["Location"].to_numpy(object),
        user_age=users["Age"].str.strip().to_numpy(object),
        user_degree=user_degree,
        user_start=np.concatenate([[0], np.cumsum(user_degree)[:-1]]),
        rating_values=ratings["rating"].to_numpy(np.int8)[order],
        books=books[[*BOOK_TEXT, *BOOK_URLS]].reset_index(drop=True),
        item_degree=item_degree.astype(np.int64),
        item_book=item_book.astype(np.int64),
    )


# ---------------------------------------------------------------------------------------------------
# Ids


def isbn10(bodies: np.ndarray) -> np.ndarray:
    """Nine-digit numbers as ISBN-10 strings with their check digit (10 is written X)."""
    digits = (bodies[:, None] // 10 ** np.arange(8, -1, -1)) % 10
    check = (digits * np.arange(1, 10)).sum(axis=1) % 11
    tail = np.where(check == 10, "X", check.astype(str))
    return np.char.add(np.char.zfill(bodies.astype(str), 9), tail).astype(object)


def item_isbns(global_items: np.ndarray) -> np.ndarray:
    """The ISBN of (copy * n_items + item): distinct for distinct inputs below ISBN_SPACE."""
    multiplier, offset = _SCRAMBLE
    return isbn10((global_items.astype(np.int64) * multiplier + offset) % ISBN_SPACE)


# ---------------------------------------------------------------------------------------------------
# The plan: which copies exist and what each holds


@dataclass(frozen=True)
class SynthPlan:
    profile: Profile
    scale: float
    seed: int = 0
    clusters: int = 48  # taste clusters per copy
    within_cluster: float = 0.8  # share of a reader's first draws inside their cluster
    users_per_block: int = 50_000

    def __post_init__(self) -> None:
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ValueError(f"scale must be a positive number, got {self.scale}")
        if self.n_copies * self.profile.n_items >= ISBN_SPACE:
            raise ValueError(
                f"scale {self.scale} needs more ISBNs than ISBN-10 has; at most ~{self.max_scale}"
            )
        if self.clusters < 1 or not 0 <= self.within_cluster <= 1:
            raise ValueError("clusters must be >= 1 and within_cluster in [0, 1]")

    @property
    def max_scale(self) -> int:
        return ISBN_SPACE // self.profile.n_items - 1

    @property
    def n_copies(self) -> int:
        return math.ceil(self.scale - 1e-12)

    def fraction(self, copy: int) -> float:
        return min(1.0, self.scale - copy)

    def rng(self, *key: int) -> np.random.Generator:
        # One stream per (purpose, copy, block): a block is drawn without replaying the ones before it.
        return np.random.default_rng([self.seed, *key])

    def members(self, copy: int, total: int, purpose: int) -> np.ndarray:
        """The real rows copy `copy` holds, in the order it writes them."""
        rng = self.rng(purpose, copy)
        size = round(total * self.fraction(copy))
        return np.sort(rng.choice(total, size=size, replace=False)) if size < total else np.arange(total)

    def copy_users(self, copy: int) -> np.ndarray:
        return self.members(copy, self.profile.n_users, 1)

    def copy_items(self, copy: int) -> np.ndarray:
        return self.members(copy, self.profile.n_items, 2)

    def first_user_id(self, copy: int) -> int:
        return 1 + sum(len(self.copy_users(c)) for c in range(copy))


# ---------------------------------------------------------------------------------------------------
# Readers and books of one copy


def _suffix(values: pd.Series, copy: int) -> pd.Series:
    if copy == 0:
        return values
    return values.where(values.str.strip() == "", values + f" [{copy + 1}]")


def user_rows(plan: SynthPlan, copy: int) -> Iterator[pd.DataFrame]:
    """BX-Users rows of one copy, in blocks: User-ID, raw Location, raw Age."""
    members, first = plan.copy_users(copy), plan.first_user_id(copy)
    for start in range(0, len(members), plan.users_per_block):
        real = members[start : start + plan.users_per_block]
        yield pd.DataFrame(
            {
                "User-ID": (first + start + np.arange(len(real))).astype(str),
                "Location": plan.profile.user_location[real],
                "Age": plan.profile.user_age[real],
            }
        )


def book_rows(plan: SynthPlan, copy: int) -> pd.DataFrame:
    """BX-Books rows of one copy: new ISBNs, the real books' text (suffixed after the first copy)."""
    items = plan.copy_items(copy)
    items = items[plan.profile.item_book[items] >= 0]
    books = plan.profile.books.iloc[plan.profile.item_book[items]].reset_index(drop=True)
    for column in ("Book-Title", "Book-Author", "Publisher"):
        books[column] = _suffix(books[column], copy)
    books.insert(0, "ISBN", item_isbns(copy * plan.profile.n_items + items))
    return books


# ---------------------------------------------------------------------------------------------------
# Ratings


class ItemSampler:
    """Draws global item ids (copy * n_items + item) proportional to popularity, optionally within
    one copy's taste cluster; inverse-CDF on cumulative popularity (searchsorted)."""

    def __init__(self, plan: SynthPlan):
        self.plan = plan
        degree = plan.profile.item_degree
        # Full copies hold every item: they share one members array and one cumulative table.
        full = (np.arange(plan.profile.n_items), np.cumsum(degree))
        self.tables = [
            full if plan.fraction(c) == 1 else self._table(plan.copy_items(c)) for c in range(plan.n_copies)
        ]
        self.copy_weight = np.array([cum[-1] if len(cum) else 0 for _, cum in self.tables], dtype=float)
        self._clusters: dict[int, tuple] = {}

    def _table(self, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return members, np.cumsum(self.plan.profile.item_degree[members])

    def item_clusters(self, copy: int) -> np.ndarray:
        return self.plan.rng(3, copy).integers(self.plan.clusters, size=len(self.tables[copy][0]))

    def anywhere(self, rng: np.random.Generator, n: int) -> np.ndarray:
        copies = rng.choice(len(self.copy_weight), size=n, p=self.copy_weight / self.copy_weight.sum())
        out = np.empty(n, dtype=np.int64)
        for copy in np.unique(copies):
            at = copies == copy
            members, cum = self.tables[copy]
            pos = np.searchsorted(cum, rng.random(int(at.sum())) * cum[-1], side="right")
            out[at] = copy * self.plan.profile.n_items + members[pos]
        return out

    def _cluster_table(self, copy: int) -> tuple:
        if copy not in self._clusters:
            self._clusters = {}  # one copy at a time: the ratings are written copy by copy
            members = self.tables[copy][0]
            labels = self.item_clusters(copy)
            order = np.argsort(labels, kind="stable")
            cum = np.cumsum(self.plan.profile.item_degree[members[order]])
            padded = np.concatenate([[0], cum])
            bounds = np.arange(self.plan.clusters)
            starts = padded[np.searchsorted(labels[order], bounds, side="left")]
            ends = padded[np.searchsorted(labels[order], bounds, side="right")]
            self._clusters[copy] = (members[order], cum, starts, ends)
        return self._clusters[copy]

    def within(self, rng: np.random.Generator, copy: int, clusters: np.ndarray) -> np.ndarray:
        ordered, cum, starts, ends = self._cluster_table(copy)
        x = starts[clusters] + rng.random(len(clusters)) * (ends[clusters] - starts[clusters])
        pos = np.minimum(np.searchsorted(cum, x, side="right"), len(cum) - 1)
        return copy * self.plan.profile.n_items + ordered[pos]


@dataclass(frozen=True)
class RatingBlock:
    user_ids: np.ndarray  # int64
    items: np.ndarray  # global item ids
    values: np.ndarray  # int8


def _distinct_draws(
    sampler: ItemSampler, rng: np.random.Generator, copy: int, degree: np.ndarray, clusters: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(reader, item) pairs, `degree[r]` distinct items per reader r where the popularity allows."""
    reader = np.repeat(np.arange(len(degree)), degree)
    inside = rng.random(len(reader)) < sampler.plan.within_cluster
    items = sampler.anywhere(rng, len(reader))
    items[inside] = sampler.within(rng, copy, clusters[reader[inside]])
    for _ in range(8):  # repeats are redrawn from every copy; heavy readers exhaust their cluster
        keep = _first_distinct(reader, items, degree)
        reader, items = reader[keep], items[keep]
        missing = degree - np.bincount(reader, minlength=len(degree))
        if not missing.any():
            break
        extra = np.repeat(np.arange(len(degree)), np.ceil(missing * 1.3).astype(np.int64) + 1)
        reader = np.concatenate([reader, extra])
        items = np.concatenate([items, sampler.anywhere(rng, len(extra))])
    keep = _first_distinct(reader, items, degree)
    return reader[keep], items[keep]


def _first_distinct(reader: np.ndarray, items: np.ndarray, degree: np.ndarray) -> np.ndarray:
    """Indices of each reader's first `degree` distinct items, in draw order, grouped by reader."""
    _, first = np.unique(reader * np.int64(2**40) + items, return_index=True)
    first.sort()
    by_reader = first[np.argsort(reader[first], kind="stable")]
    rank = np.arange(len(by_reader)) - np.searchsorted(reader[by_reader], reader[by_reader])
    return by_reader[rank < degree[reader[by_reader]]]


def rating_blocks(plan: SynthPlan, sampler: ItemSampler | None = None) -> Iterator[RatingBlock]:
    """Every rating, one block of readers at a time, copy after copy."""
    sampler = sampler or ItemSampler(plan)
    profile = plan.profile
    for copy in range(plan.n_copies):
        members, first = plan.copy_users(copy), plan.first_user_id(copy)
        clusters = plan.rng(4, copy).integers(plan.clusters, size=len(members))
        for block, start in enumerate(range(0, len(members), plan.users_per_block)):
            real = members[start : start + plan.users_per_block]
            rng = plan.rng(5, copy, block)
            reader, items = _distinct_draws(
                sampler, rng, copy, profile.user_degree[real], clusters[start : start + len(real)]
            )
            template = real[reader]
            pick = profile.user_start[template] + (rng.random(len(reader)) * profile.user_degree[template])
            yield RatingBlock(
                user_ids=first + start + reader.astype(np.int64),
                items=items,
                values=profile.rating_values[pick.astype(np.int64)],
            )


def rating_rows(block: RatingBlock) -> pd.DataFrame:
    """A block as BX-Book-Ratings rows."""
    return pd.DataFrame(
        {
            "User-ID": block.user_ids.astype(str),
            "ISBN": item_isbns(block.items),
            "Book-Rating": block.values.astype(str),
        }
    )
