"""Online metrics from the store: the one function behind `/metrics`, the dashboard's Monitoring page
and `bookrec experiment report` (the arithmetic is `pipeline.evaluation.online`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from pipeline.online import attribute, compare_arms, long_tail_items, online_metrics
from pipeline.storage import impressions as store
from pipeline.storage.feedback import FeedbackStore


@dataclass(frozen=True)
class OnlineReport:
    by_day: pd.DataFrame  # one row per (model_version, arm, day)
    by_version: pd.DataFrame  # one row per (model_version, arm)
    comparison: dict  # challenger minus production, click-through
    comparison_positive: dict  # challenger minus production, positive rate
    impressions: int
    clicks: int


def head_isbns(recommender) -> set[str]:
    """The popular head of the serving model's catalog (what `long_tail_share` excludes)."""
    tail = long_tail_items(np.asarray(recommender.popularity, dtype=np.float64))
    return set(recommender.isbns[~tail])


def online_report(
    feedback: FeedbackStore,
    recommender,
    window: timedelta,
    days: float = 30,
    surface: str | None = "recommendations",
) -> OnlineReport:
    """Impressions of the last `days` (of one `surface`, or all), attributed and summarised."""
    since = datetime.now(UTC) - timedelta(days=days)
    shown, books = store.served_lists(feedback, since)
    if surface is not None:
        shown = shown[shown["surface"] == surface]
        books = books[books["request_id"].isin(shown["request_id"])]
    clicks = attribute(shown, books, feedback.frame(since), window, recommender.min_explicit_rating)
    catalog, head = len(recommender.isbns), head_isbns(recommender)
    by_day = online_metrics(shown, books, clicks, catalog, head) if len(shown) else pd.DataFrame()
    by_version = (
        online_metrics(shown, books, clicks, catalog, head, by=("model_version", "arm"))
        if len(shown)
        else pd.DataFrame()
    )
    return OnlineReport(
        by_day,
        by_version,
        compare_arms(shown, clicks, "clicked"),
        compare_arms(shown, clicks, "positive"),
        int(len(shown)),
        int(len(clicks)),
    )
