"""Live feedback: interactions posted by readers after training, stored durably and read back at once.

SQLite under `data/feedback/feedback.db` on one machine; any SQLAlchemy URL (the compose deployment's
Postgres) through `BOOKREC_FEEDBACK_URL`. The serving core folds a reader's stored interactions into
their representation on the next request; `bookrec feedback export` turns them (and the books added
to the catalog since training) into a raw-data source (`data/raw/feedback/interactions.csv` and
`books.csv`) that DVC tracks and the next training run ingests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

metadata = sa.MetaData()
interactions = sa.Table(
    "interactions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.String(32), nullable=False, index=True),
    sa.Column("isbn", sa.String(32), nullable=False),
    sa.Column("rating", sa.SmallInteger, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # The impression (served list) the reader acted on, when the client says so: online metrics.
    sa.Column("request_id", sa.String(32), nullable=True),
)

EXPORT_COLUMNS = ["User-ID", "ISBN", "Book-Rating"]


def feedback_url(root: Path) -> str:
    return os.environ.get("BOOKREC_FEEDBACK_URL") or f"sqlite:///{root / 'data' / 'feedback' / 'feedback.db'}"


@dataclass(frozen=True)
class Interaction:
    user_id: str
    isbn: str
    rating: int
    created_at: datetime
    request_id: str | None = None


def _sqlite_for_several_processes(connection, _record) -> None:
    """The API, the dashboard and the impression writers share one SQLite file: write-ahead logging
    lets readers go on while one of them commits (a rollback journal locks them out for the commit),
    and a writer waits for another instead of failing. Commits stay synchronous (FULL): a posted
    rating is on disk before the API answers."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class FeedbackStore:
    def __init__(self, url: str):
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # A file database has no connection to lose: checking one before each query (a round trip per
        # request on the serving path) is only worth it for a server (the compose deployment's Postgres).
        self.engine = sa.create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
        if url.startswith("sqlite"):
            sa.event.listen(self.engine, "connect", _sqlite_for_several_processes)
        from pipeline.storage import added_books, impressions  # noqa: F401  (their tables live here too)

        metadata.create_all(self.engine)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """A store created by an earlier version lacks `interactions.request_id`: add it (nullable)."""
        present = {c["name"] for c in sa.inspect(self.engine).get_columns("interactions")}
        if "request_id" not in present:
            with self.engine.begin() as connection:
                connection.execute(sa.text("ALTER TABLE interactions ADD COLUMN request_id VARCHAR(32)"))

    @classmethod
    def for_root(cls, root: Path) -> FeedbackStore:
        return cls(feedback_url(root))

    def add(self, user_id: str, isbn: str, rating: int, request_id: str | None = None) -> Interaction:
        """Store one interaction (0 = read without rating, 1..10 explicit) and return it once committed;
        `request_id` names the served list it came from, if any."""
        if not 0 <= int(rating) <= 10:
            raise ValueError(f"rating must be between 0 and 10, not {rating}")
        row = Interaction(
            str(user_id).strip(), str(isbn).strip().upper(), int(rating), datetime.now(UTC), request_id
        )
        with self.engine.begin() as connection:
            connection.execute(interactions.insert().values(**row.__dict__))
        return row

    def for_user(self, user_id: str) -> list[Interaction]:
        query = (
            sa.select(interactions)
            .where(interactions.c.user_id == str(user_id).strip())
            .order_by(interactions.c.id)
        )
        with self.engine.connect() as connection:
            return [
                Interaction(r.user_id, r.isbn, r.rating, r.created_at, r.request_id)
                for r in connection.execute(query)
            ]

    def latest_ratings(self, user_id: str) -> dict[str, int]:
        """ISBN -> the reader's latest rating of it (0 = read without rating), from one query. What
        counts as a positive is the model's protocol (`pipeline.serving.service.reads_and_likes`)."""
        return self.latest_ratings_of([user_id]).get(str(user_id).strip(), {})

    def latest_ratings_of(self, user_ids: list[str]) -> dict[str, dict[str, int]]:
        """`latest_ratings` of several readers from one query (readers with nothing stored are absent)."""
        wanted = sorted({str(u).strip() for u in user_ids})
        query = (
            sa.select(interactions.c.user_id, interactions.c.isbn, interactions.c.rating)
            .where(interactions.c.user_id.in_(wanted))
            .order_by(interactions.c.id)
        )
        latest: dict[str, dict[str, int]] = {}
        with self.engine.connect() as connection:
            for user_id, isbn, rating in connection.execute(query):
                latest.setdefault(user_id, {})[isbn] = rating
        return latest

    def count(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(sa.select(sa.func.count()).select_from(interactions)).scalar_one())

    def frame(self, since: datetime | None = None) -> pd.DataFrame:
        """Every stored interaction since `since`: user_id, isbn, rating, created_at, request_id."""
        query = sa.select(interactions).order_by(interactions.c.id)
        if since is not None:
            query = query.where(interactions.c.created_at >= since)
        with self.engine.connect() as connection:
            frame = pd.DataFrame(
                connection.execute(query).mappings().all(), columns=list(interactions.c.keys())
            )
        frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
        return frame.drop(columns="id")

    def export(self) -> pd.DataFrame:
        """Every stored interaction in the raw ratings layout (the latest rating per reader and book)."""
        query = sa.select(interactions).order_by(interactions.c.id)
        with self.engine.connect() as connection:
            frame = pd.DataFrame(
                connection.execute(query).mappings().all(),
                columns=["id", "user_id", "isbn", "rating", "created_at"],
            )
        frame = frame.drop_duplicates(["user_id", "isbn"], keep="last")
        return frame.rename(columns={"user_id": "User-ID", "isbn": "ISBN", "rating": "Book-Rating"})[
            EXPORT_COLUMNS
        ]


FEEDBACK_FILE = "interactions.csv"


def write_export(frame: pd.DataFrame, folder: Path) -> Path:
    """The interactions in the raw ratings format (`;`, every field quoted, UTF-8), written atomically."""
    from pipeline.io import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / FEEDBACK_FILE
    lines = ['"User-ID";"ISBN";"Book-Rating"']
    for user_id, isbn, rating in frame[EXPORT_COLUMNS].itertuples(index=False, name=None):
        lines.append(f'"{user_id}";"{isbn}";"{int(rating)}"')
    with atomic_path(target) as tmp:
        tmp.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    return target


BOOKS_FILE = "books.csv"  # the books added since the dump, in its books format (storage/added_books.py)


def export_to_raw(store: FeedbackStore, folder: Path) -> int:
    """The stored interactions and the books added to the catalog, written beside the raw data."""
    from pipeline.storage.added_books import added_books_frame, write_books_export

    frame = store.export()
    write_export(frame, folder)
    write_books_export(added_books_frame(store), folder)
    return len(frame)


def ensure_export(folder: Path) -> Path:
    """An (empty) export where none exists yet, so that data/raw always has the same layout for DVC."""
    from pipeline.storage.added_books import BOOK_COLUMNS, write_books_export

    target = folder / FEEDBACK_FILE
    if not target.is_file():
        write_export(pd.DataFrame(columns=EXPORT_COLUMNS), folder)
    if not (folder / BOOKS_FILE).is_file():
        write_books_export(pd.DataFrame(columns=BOOK_COLUMNS), folder)
    return target
