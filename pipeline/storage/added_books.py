"""Books added to the catalog between trainings, in the serving store (the feedback store's database).

`bookrec books add FILE` and `PUT /admin/books/{isbn}` write them, validated like the dump's books
(`pipeline.data.ingest.check_added_books`); every service reads them (and the ratings they got) every
`serve.rules_refresh_seconds` and serves them at once (`pipeline.serving.catalog_growth`);
`bookrec feedback export` writes them beside the raw data, in the dump's books format, where the
next ingest merges them with the dump's books.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from pipeline.storage.feedback import BOOKS_FILE, FeedbackStore, interactions, metadata

added_books = sa.Table(
    "added_books",
    metadata,
    sa.Column("isbn", sa.String(32), primary_key=True),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("author", sa.Text, nullable=True),
    sa.Column("year", sa.Integer, nullable=True),
    sa.Column("publisher", sa.Text, nullable=True),
    sa.Column("image_url_s", sa.Text, nullable=True),
    sa.Column("image_url_m", sa.Text, nullable=True),
    sa.Column("image_url_l", sa.Text, nullable=True),
    sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
)
BOOK_COLUMNS = ["isbn", "title", "author", "year", "publisher", "image_url_s", "image_url_m", "image_url_l"]


def _value(value):
    return None if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)) else value


def raw_header() -> list[str]:
    """The dump's books columns, in order (imported here only: serving loads no data contracts)."""
    from pipeline.schemas import RAW_COLUMNS

    return list(RAW_COLUMNS["books"])


def add_books(store: FeedbackStore, books: pd.DataFrame) -> int:
    """Store (or update) checked books (the interim books layout) in one transaction; how many."""
    now = datetime.now(UTC)
    rows = [
        {column: _value(getattr(book, column)) for column in BOOK_COLUMNS} | {"added_at": now}
        for book in books[BOOK_COLUMNS].itertuples(index=False)
    ]
    for row in rows:
        row["year"] = None if row["year"] is None else int(row["year"])
    with store.engine.begin() as connection:
        connection.execute(added_books.delete().where(added_books.c.isbn.in_([r["isbn"] for r in rows])))
        if rows:
            connection.execute(added_books.insert(), rows)
    return len(rows)


def added_books_frame(store: FeedbackStore) -> pd.DataFrame:
    """Every added book, oldest first (the interim books layout)."""
    query = sa.select(*(added_books.c[c] for c in BOOK_COLUMNS)).order_by(
        added_books.c.added_at, added_books.c.isbn
    )
    with store.engine.connect() as connection:
        frame = pd.DataFrame(connection.execute(query).all(), columns=BOOK_COLUMNS)
    return frame.astype({"year": "Int16"}).astype({c: "string" for c in BOOK_COLUMNS if c != "year"})


def ratings_of_added_books(store: FeedbackStore) -> pd.DataFrame:
    """user_id, isbn, rating: each reader's latest rating of each added book, from one query."""
    query = (
        sa.select(interactions.c.user_id, interactions.c.isbn, interactions.c.rating)
        .where(interactions.c.isbn.in_(sa.select(added_books.c.isbn)))
        .order_by(interactions.c.id)
    )
    with store.engine.connect() as connection:
        frame = pd.DataFrame(connection.execute(query).all(), columns=["user_id", "isbn", "rating"])
    return frame.drop_duplicates(["user_id", "isbn"], keep="last").reset_index(drop=True)


def books_csv(books: pd.DataFrame) -> bytes:
    """Books in the dump's books format: `;`-separated, every field quoted, quotes escaped with a
    backslash (as the original dump and its parser do), UTF-8."""
    text = io.StringIO()
    writer = csv.writer(
        text, delimiter=";", quoting=csv.QUOTE_ALL, escapechar="\\", doublequote=False, lineterminator="\r\n"
    )
    writer.writerow(raw_header())
    for book in books[BOOK_COLUMNS].itertuples(index=False):
        writer.writerow(["" if _value(value) is None else str(value) for value in book])
    return text.getvalue().encode("utf-8")


def write_books_export(books: pd.DataFrame, folder: Path) -> Path:
    """`folder`/books.csv (the next ingest merges it with the dump's books), written atomically."""
    from pipeline.io import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / BOOKS_FILE
    with atomic_path(target) as tmp:
        tmp.write_bytes(books_csv(books))
    return target


def add_books_file(store: FeedbackStore, path: Path, params) -> int:
    """`bookrec books add FILE`: every row of a file in the dump's books format checked
    (`check_added_books`: an `IngestError` names the file, line and field of a bad row) and stored
    in one transaction, or nothing stored; how many were stored."""
    from pipeline.data.ingest import check_added_books
    from pipeline.storage.rawdata import read_raw_csv

    return add_books(store, check_added_books(read_raw_csv(Path(path), "books"), params, Path(path).name))


def add_book_fields(store: FeedbackStore, isbn: str, fields: dict, params) -> str:
    """`PUT /admin/books/{isbn}`: one book from JSON fields (title, author, year, publisher, image_url),
    checked as the first row of a books file would be; its normalised ISBN."""
    from pipeline.data.ingest import check_added_books

    image = fields.get("image_url")
    values = [isbn, fields.get("title"), fields.get("author"), fields.get("year"), fields.get("publisher")]
    text = ["" if value is None else str(value) for value in (*values, image, image, image)]
    raw = pd.DataFrame([text], columns=raw_header(), dtype=str).assign(row=1, line=2)
    books = check_added_books(raw, params, "request body")
    add_books(store, books)
    return str(books["isbn"].iloc[0])


def remove_books(store: FeedbackStore, isbns) -> int:
    """Withdraw added books (a book added by mistake): no service serves them after its next reread."""
    wanted = [str(i).strip().upper() for i in isbns]
    with store.engine.begin() as connection:
        return connection.execute(added_books.delete().where(added_books.c.isbn.in_(wanted))).rowcount
