"""Column names and table contracts (pandera) for every table the pipeline writes.

A stage validates what it writes against these schemas, and the data tests validate what lies on disk,
so a contract is stated once and checked in both places.
"""

from __future__ import annotations

import pandera.pandas as pa

# The three original Book-Crossing files, by role. The Kaggle re-upload uses the same columns.
RAW_COLUMNS: dict[str, tuple[str, ...]] = {
    "ratings": ("User-ID", "ISBN", "Book-Rating"),
    "users": ("User-ID", "Location", "Age"),
    "books": (
        "ISBN",
        "Book-Title",
        "Book-Author",
        "Year-Of-Publication",
        "Publisher",
        "Image-URL-S",
        "Image-URL-M",
        "Image-URL-L",
    ),
}

# ISBN-10 (last character may be X) or ISBN-13; other values are kept but counted as malformed.
ISBN_PATTERN = r"^(?:\d{9}[\dX]|\d{13})$"

_nullable_text = {"nullable": True}

INTERIM_RATINGS = pa.DataFrameSchema(
    {
        "user_id": pa.Column(str, pa.Check.str_matches(r"^[\w.-]+$")),
        "isbn": pa.Column(str, pa.Check.str_length(min_value=1)),
        "rating": pa.Column("int8", pa.Check.in_range(0, 10)),
    },
    unique=["user_id", "isbn"],
    strict=True,
    name="interim/ratings",
)

# A book's columns, shared by the interim catalog and the processed item table.
BOOK_COLUMNS = {
    "title": pa.Column(str, **_nullable_text),
    "author": pa.Column(str, **_nullable_text),
    "year": pa.Column("Int16", nullable=True),
    "publisher": pa.Column(str, **_nullable_text),
    "image_url_s": pa.Column(str, **_nullable_text),
    "image_url_m": pa.Column(str, **_nullable_text),
    "image_url_l": pa.Column(str, **_nullable_text),
}
# A reader's columns, shared by the interim users and the processed user table.
READER_COLUMNS = {
    "age": pa.Column("Int16", nullable=True),
    "city": pa.Column(str, **_nullable_text),
    "region": pa.Column(str, **_nullable_text),
    "country": pa.Column(str, **_nullable_text),
}

INTERIM_USERS = pa.DataFrameSchema(
    {"user_id": pa.Column(str, pa.Check.str_matches(r"^[\w.-]+$"), unique=True), **READER_COLUMNS},
    strict=True,
    name="interim/users",
)

INTERIM_BOOKS = pa.DataFrameSchema(
    {"isbn": pa.Column(str, pa.Check.str_length(min_value=1), unique=True), **BOOK_COLUMNS},
    strict=True,
    name="interim/books",
)

REJECTED = pa.DataFrameSchema(
    {
        "row": pa.Column("int64", pa.Check.ge(1)),
        "line": pa.Column("int64", pa.Check.ge(2)),
        "reason": pa.Column(str),
    },
    strict=False,
    name="interim/rejected",
)

# Interactions, one table per split (and the dislikes).
INTERACTIONS = pa.DataFrameSchema(
    {
        "user_idx": pa.Column("int32", pa.Check.ge(0)),
        "item_idx": pa.Column("int32", pa.Check.ge(0)),
        "rating": pa.Column("int8", pa.Check.in_range(0, 10)),
    },
    unique=["user_idx", "item_idx"],
    strict=True,
    name="processed/interactions",
)

PROCESSED_USERS = pa.DataFrameSchema(
    {
        "user_idx": pa.Column("int32", pa.Check.ge(0), unique=True),
        "user_id": pa.Column(str, unique=True),
        **READER_COLUMNS,
    },
    strict=True,
    name="processed/users",
)

PROCESSED_ITEMS = pa.DataFrameSchema(
    {
        "item_idx": pa.Column("int32", pa.Check.ge(0), unique=True),
        "isbn": pa.Column(str, unique=True),
        **BOOK_COLUMNS,
        "work_idx": pa.Column("int32", pa.Check.ge(0)),  # editions of one book share it (data/catalog.py)
        "author_idx": pa.Column("int32", pa.Check.ge(-1)),  # -1: author unknown
    },
    strict=True,
    name="processed/items",
)

USER_FEATURES = pa.DataFrameSchema(
    {
        "user_idx": pa.Column("int32", pa.Check.ge(0), unique=True),
        "age_bucket": pa.Column("int32", pa.Check.ge(0)),
        "country": pa.Column("int32", pa.Check.ge(0)),
        "region": pa.Column("int32", pa.Check.ge(0)),
    },
    strict=True,
    name="features/users",
)

ITEM_FEATURES = pa.DataFrameSchema(
    {
        "item_idx": pa.Column("int32", pa.Check.ge(0), unique=True),
        "author": pa.Column("int32", pa.Check.ge(0)),
        "publisher": pa.Column("int32", pa.Check.ge(0)),
        "decade": pa.Column("int32", pa.Check.ge(0)),
    },
    strict=True,
    name="features/items",
)
