"""Online metrics from the store: the one function behind `/metrics`, the dashboard's Monitoring page,
`bookrec experiment report`, `experiment promote` and the simulator (the arithmetic is
`pipeline.online`, the intervals `pipeline.statistics`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from pipeline.online import (
    ExperimentPlan,
    ExperimentResult,
    attribute,
    experiment_result,
    long_tail_items,
    online_metrics,
)
from pipeline.storage import experiments
from pipeline.storage import impressions as store
from pipeline.storage.feedback import FeedbackStore


@dataclass(frozen=True)
class OnlineReport:
    by_day: pd.DataFrame  # one row per (model_version, arm, day)
    by_version: pd.DataFrame  # one row per (model_version, arm)
    experiment: ExperimentPlan | None  # the open experiment, else the one that ended last
    comparison: ExperimentResult | None  # its challenger minus production, click-through
    comparison_positive: ExperimentResult | None  # the same, positive rate
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
    confidence: float = 0.95,
    experiment: ExperimentPlan | None = None,
) -> OnlineReport:
    """Impressions of the last `days` (of one `surface`, or all), attributed and summarised; and the
    comparison of `experiment`'s arms (default: the latest experiment) over its whole run, on its
    own evidence whatever `days` and `surface` say."""
    since = datetime.now(UTC) - timedelta(days=days)
    plan = experiment if experiment is not None else experiments.latest(feedback)
    first = min(since, plan.started_at) if plan is not None else since
    shown, books = store.served_lists(feedback, first)
    clicks = attribute(shown, books, feedback.frame(first), window, recommender.min_explicit_rating)
    compared = {
        metric: experiment_result(shown, clicks, plan, metric, confidence) if plan is not None else None
        for metric in ("clicked", "positive")
    }
    recent = shown["created_at"] >= since
    if surface is not None:
        recent &= shown["surface"] == surface
    shown = shown[recent]
    books = books[books["request_id"].isin(shown["request_id"])]
    clicks = clicks[clicks["request_id"].isin(shown["request_id"])]
    catalog, head = len(recommender.isbns), head_isbns(recommender)

    def table(by: tuple[str, ...]) -> pd.DataFrame:
        if not len(shown):
            return pd.DataFrame()
        return online_metrics(shown, books, clicks, catalog, head, by=by, confidence=confidence)

    return OnlineReport(
        table(("model_version", "arm", "day")),
        table(("model_version", "arm")),
        plan,
        compared["clicked"],
        compared["positive"],
        int(len(shown)),
        int(len(clicks)),
    )
