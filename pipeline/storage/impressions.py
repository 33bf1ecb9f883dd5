"""What readers were shown, and the platform's run-time rules: impressions, unavailable books and the
run-time experiment setting, in the feedback store's database (SQLite by default, Postgres in compose).

`ImpressionLog` takes impressions off the request's hot path: `log` puts one on a bounded queue and
returns at once; a writer thread inserts them in batches. A full queue drops the impression and
counts it: logging never slows or fails a request.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd
import sqlalchemy as sa

from pipeline.storage.feedback import FeedbackStore, metadata

log = logging.getLogger("bookrec.impressions")

impressions = sa.Table(
    "impressions",
    metadata,
    sa.Column("request_id", sa.String(32), primary_key=True),
    sa.Column("user_id", sa.String(32), nullable=False, index=True),
    sa.Column("model_version", sa.String(16), nullable=False),
    sa.Column("arm", sa.String(16), nullable=False),  # production, challenger
    sa.Column("shown", sa.Boolean, nullable=False),  # False: a shadow list, scored and logged only
    sa.Column("surface", sa.String(16), nullable=False),  # recommendations, similar, new_reader, dashboard
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    # The list, best first, space-separated: one row per list keeps the writer cheap under load
    # (a row per book made logging cost a fifth of the API's p50 at concurrency 8).
    sa.Column("isbns", sa.Text, nullable=False),
)
unavailable_books = sa.Table(
    "unavailable_books",
    metadata,
    sa.Column("isbn", sa.String(32), primary_key=True),
    sa.Column("reason", sa.String(200), nullable=False),
    sa.Column("since", sa.DateTime(timezone=True), nullable=False),
)
settings = sa.Table(
    "settings",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
EXPERIMENT_KEY = "serve.experiment"
experiments = sa.Table(  # A/B experiments as records (pipeline/storage/experiments.py reads and writes them)
    "experiments",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("plan", sa.Text, nullable=False),  # pipeline.online.ExperimentPlan as JSON
)


@dataclass(frozen=True)
class Impression:
    request_id: str
    user_id: str
    model_version: str
    arm: str
    shown: bool
    surface: str
    isbns: tuple[str, ...]
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def write_impressions(store: FeedbackStore, batch: list[Impression]) -> None:
    """Insert a batch of impressions in one transaction."""
    rows = [
        {
            "request_id": i.request_id,
            "user_id": i.user_id,
            "model_version": i.model_version,
            "arm": i.arm,
            "shown": i.shown,
            "surface": i.surface,
            "created_at": i.created_at,
            "isbns": " ".join(i.isbns),
        }
        for i in batch
    ]
    with store.engine.begin() as connection:
        connection.execute(impressions.insert(), rows)


class ReaderCap:
    """At most `per_minute` impressions per reader (a moving window of the `limits` library), so that
    reads cannot grow the store without bound; what it turns away is counted."""

    def __init__(self, per_minute: int, on_capped: Callable[[], None] = lambda: None):
        self.capped, self._on_capped = 0, on_capped
        self._item = self._limiter = None
        if per_minute > 0:
            from limits import RateLimitItemPerMinute, storage, strategies

            self._item = RateLimitItemPerMinute(per_minute)
            self._limiter = strategies.MovingWindowRateLimiter(storage.MemoryStorage())

    def admits(self, reader: str) -> bool:
        if self._limiter is None or self._limiter.hit(self._item, "impressions", reader):
            return True
        self.capped += 1
        self._on_capped()
        return False


class ImpressionLog:
    """A bounded queue of impressions and the thread that writes them; counts what it drops."""

    def __init__(
        self,
        write: Callable[[list[Impression]], None],
        capacity: int = 10_000,
        batch_size: int = 1000,
        linger_seconds: float = 0.5,
        on_drop: Callable[[], None] = lambda: None,
        enabled: bool = True,
        per_reader_per_minute: int = 0,
        on_capped: Callable[[], None] = lambda: None,
    ):
        self._write, self._batch_size, self._on_drop, self.enabled = write, batch_size, on_drop, enabled
        self._cap = ReaderCap(per_reader_per_minute, on_capped)
        # Wait this long after the first impression of a batch for more: one commit per batch, not
        # per request, under load (an SQLite commit is an fsync).
        self._linger = linger_seconds
        self._queue: queue.Queue[Impression | None] = queue.Queue(maxsize=capacity)
        self.logged = self.dropped = self.written = self.failed = 0
        self._thread = threading.Thread(target=self._run, name="impression-writer", daemon=True)
        self._thread.start()

    def log(self, impression: Impression, reader: str | None = None) -> bool:
        """Queue one impression; False (and counted) if its `reader` (default: its user id) reached the
        per-minute cap or the queue is full. Never blocks."""
        if not self.enabled:  # `bookrec serve --no-impressions` (the benchmark's reference)
            return False
        if not self._cap.admits(reader or impression.user_id):
            return False
        try:
            self._queue.put_nowait(impression)
        except queue.Full:
            self.dropped += 1
            self._on_drop()
            return False
        self.logged += 1
        return True

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far is written (tests, shutdown)."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        done.wait(timeout)

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._queue.task_done()
                return
            batch = [first]
            deadline = time.monotonic() + self._linger
            while len(batch) < self._batch_size:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:  # close() after this batch
                    self._queue.put(None)
                    self._queue.task_done()
                    break
                batch.append(item)
            try:
                self._write(batch)
                self.written += len(batch)
            except Exception:  # the database is down: these impressions are lost, and counted
                self.failed += len(batch)
                log.exception("could not write %d impressions", len(batch))
            for _ in batch:
                self._queue.task_done()


def served_lists(store: FeedbackStore, since: datetime | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Impressions since `since` (one row per list: request_id, user_id, model_version, arm, shown,
    surface, created_at) and their books (request_id, position with 1 = top, isbn), from one query."""
    query = sa.select(impressions)
    if since is not None:
        query = query.where(impressions.c.created_at >= since)
    with store.engine.connect() as connection:
        frame = pd.DataFrame(connection.execute(query).mappings().all(), columns=list(impressions.c.keys()))
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    books = _books(zip(frame["request_id"], frame["isbns"], strict=True))
    return frame.drop(columns="isbns"), books


def impressions_frame(store: FeedbackStore, since: datetime | None = None) -> pd.DataFrame:
    return served_lists(store, since)[0]


def _books(lists) -> pd.DataFrame:
    rows = [
        (request_id, position, isbn)
        for request_id, isbns in lists
        for position, isbn in enumerate(isbns.split(), start=1)
    ]
    return pd.DataFrame(rows, columns=["request_id", "position", "isbn"])


def impression_books_frame(store: FeedbackStore, request_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """The books of impressions, one row per position: request_id, position (1 = top), isbn."""
    query = sa.select(impressions.c.request_id, impressions.c.isbns)
    if request_ids is not None:
        query = query.where(impressions.c.request_id.in_(list(request_ids)))
    with store.engine.connect() as connection:
        return _books(connection.execute(query).all())


def set_unavailable(store: FeedbackStore, isbns: Iterable[str], reason: str) -> int:
    """Mark books unavailable (never served) until `set_available`; the number newly marked."""
    now = datetime.now(UTC)
    added = 0
    with store.engine.begin() as connection:
        known = set(connection.execute(sa.select(unavailable_books.c.isbn)).scalars())
        for isbn in {str(i).strip().upper() for i in isbns} - known:
            connection.execute(unavailable_books.insert().values(isbn=isbn, reason=reason[:200], since=now))
            added += 1
    return added


def set_available(store: FeedbackStore, isbns: Iterable[str]) -> int:
    wanted = [str(i).strip().upper() for i in isbns]
    with store.engine.begin() as connection:
        return connection.execute(
            unavailable_books.delete().where(unavailable_books.c.isbn.in_(wanted))
        ).rowcount


def unavailable(store: FeedbackStore) -> dict[str, str]:
    """ISBN -> why it is unavailable."""
    with store.engine.connect() as connection:
        return dict(connection.execute(sa.select(unavailable_books.c.isbn, unavailable_books.c.reason)).all())


def read_setting(store: FeedbackStore, key: str) -> dict | None:
    with store.engine.connect() as connection:
        value = connection.execute(sa.select(settings.c.value).where(settings.c.key == key)).scalar()
    return None if value is None else json.loads(value)


def write_setting(store: FeedbackStore, key: str, value: dict | None) -> None:
    """Store (or, with None, clear) a run-time setting that overrides params.yaml for every service."""
    with store.engine.begin() as connection:
        connection.execute(settings.delete().where(settings.c.key == key))
        if value is not None:
            connection.execute(
                settings.insert().values(key=key, value=json.dumps(value), updated_at=datetime.now(UTC))
            )
