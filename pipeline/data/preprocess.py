"""The protocol, part one: positives, dislikes, the iterative k-core, the id maps and the catalog's
works and authors (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.config import PreprocessParams
from pipeline.data.catalog import with_catalog_columns
from pipeline.data.protocol import is_positive


@dataclass
class Interactions:
    """Positives after the k-core, with dense ids, and the tables that map ids back to the catalog."""

    interactions: pd.DataFrame  # user_idx, item_idx, rating
    dislikes: pd.DataFrame  # user_idx, item_idx, rating: explicit ratings below the threshold, same id space
    users: pd.DataFrame  # user_idx, user_id, age, city, region, country
    items: pd.DataFrame  # item_idx, isbn, title, author, year, publisher, image urls, work_idx, author_idx
    counts: dict[str, int] = field(default_factory=dict)


def k_core(
    pairs: pd.DataFrame, user_k: int, item_k: int, user: str = "user_id", item: str = "isbn"
) -> pd.DataFrame:
    """The largest subset in which every user has >= user_k rows and every item >= item_k rows."""
    core = pairs
    while True:
        user_counts = core[user].map(core[user].value_counts())
        item_counts = core[item].map(core[item].value_counts())
        enough = (user_counts >= user_k) & (item_counts >= item_k)
        if enough.all():
            return core
        core = core[enough]


def ordered_user_ids(ids) -> np.ndarray:
    """The readers' dense order: Book-Crossing's numeric ids in numeric order, then any ids the live
    service issued, in string order."""
    return np.asarray(
        sorted(ids, key=lambda u: (0, int(u), "") if u.isdigit() else (1, 0, u)), dtype=object
    ).astype(str)


def ordered_isbns(isbns) -> np.ndarray:
    """The books' dense order: ISBNs in string order."""
    return np.sort(np.asarray(isbns, dtype=object)).astype(str)


def id_tables(
    user_ids: np.ndarray, isbns: np.ndarray, users: pd.DataFrame, books: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """users.parquet and items.parquet: each dense id with its raw id and what ingest knows of it
    (`users` and `books` may hold more rows than the ids), items with their works and authors."""
    user_table = pd.DataFrame(
        {"user_idx": np.arange(len(user_ids), dtype=np.int32), "user_id": user_ids}
    ).merge(users, on="user_id", how="left", validate="one_to_one")
    item_table = pd.DataFrame({"item_idx": np.arange(len(isbns), dtype=np.int32), "isbn": isbns}).merge(
        books, on="isbn", how="left", validate="one_to_one"
    )
    return user_table, with_catalog_columns(item_table)


def build_interactions(
    ratings: pd.DataFrame, users: pd.DataFrame, books: pd.DataFrame, params: PreprocessParams
) -> Interactions:
    counts: dict[str, int] = {"ratings_in": len(ratings)}
    in_catalog = ratings[ratings["isbn"].isin(books["isbn"])]
    counts["ratings_with_isbn_in_catalog"] = len(in_catalog)
    positive = is_positive(in_catalog["rating"], params.min_explicit_rating)
    positives = in_catalog[positive]
    dislikes = in_catalog[~positive]
    counts["positives"] = len(positives)
    counts["dislikes"] = len(dislikes)
    core = k_core(positives, params.user_core, params.item_core)
    counts["interactions_after_k_core"] = len(core)

    user_ids, isbns = ordered_user_ids(core["user_id"].unique()), ordered_isbns(core["isbn"].unique())
    user_index = pd.Series(np.arange(len(user_ids), dtype=np.int32), index=user_ids)
    item_index = pd.Series(np.arange(len(isbns), dtype=np.int32), index=isbns)
    counts["users"] = len(user_ids)
    counts["items"] = len(isbns)

    def encode(frame: pd.DataFrame) -> pd.DataFrame:
        encoded = pd.DataFrame(
            {
                "user_idx": frame["user_id"].map(user_index).astype("int32"),
                "item_idx": frame["isbn"].map(item_index).astype("int32"),
                "rating": frame["rating"].astype("int8"),
            }
        )
        return encoded.sort_values(["user_idx", "item_idx"], ignore_index=True)

    known_dislikes = dislikes[
        dislikes["user_id"].isin(user_index.index) & dislikes["isbn"].isin(item_index.index)
    ]
    user_table, item_table = id_tables(user_ids, isbns, users, books)
    return Interactions(
        interactions=encode(core),
        dislikes=encode(known_dislikes),
        users=user_table,
        items=item_table,
        counts=counts,
    )
