"""Online evaluation (pure, shared by serving and the reports like `ranking.py`): what readers did
with the lists they were shown.

Inputs are three tables: impressions (one row per served list: request_id, user_id, model_version,
arm, shown, created_at), their books (request_id, position, isbn) and the feedback (user_id, isbn,
rating, created_at, request_id or None).

Attribution: a feedback row that names a request id is attributed to that impression when the book
was in its list; one that does not is attributed to the latest list shown to that reader, within
`window` before the feedback, that contained the book. Each feedback row counts once, each
(impression, position) once. Shadow lists (shown = False) are never attributed: nobody saw them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from pipeline.data.protocol import is_positive
from pipeline.statistics import ratio_difference, ratio_interval

EXPERIMENT_SURFACE = "recommendations"  # the only surface an experiment's arms are served on


def long_tail_items(popularity: np.ndarray, head_share: float = 0.2) -> np.ndarray:
    """Bool mask of the long tail: everything but the most popular items that together hold
    `head_share` of all interactions (offline and online metrics use the same split)."""
    order = np.argsort(-popularity, kind="stable")
    cumulative = np.cumsum(popularity[order]) / max(popularity.sum(), 1)
    n_head = int(np.searchsorted(cumulative, head_share) + 1)
    tail = np.ones(len(popularity), dtype=bool)
    tail[order[:n_head]] = False
    return tail


def attribute(
    impressions: pd.DataFrame,
    books: pd.DataFrame,
    feedback: pd.DataFrame,
    window: timedelta,
    min_explicit_rating: int,
) -> pd.DataFrame:
    """Clicks: one row per attributed (impression, position): request_id, position, isbn, rating,
    positive, created_at (of the feedback)."""
    shown = impressions.loc[impressions["shown"].astype(bool), ["request_id", "user_id", "created_at"]]
    slots = books.merge(shown, on="request_id").rename(columns={"created_at": "shown_at"})
    fb = feedback.reset_index(drop=True).assign(feedback_row=lambda f: np.arange(len(f)))
    named = fb.dropna(subset=["request_id"]).merge(slots, on=["request_id", "user_id", "isbn"], how="inner")
    rest = fb.loc[~fb["feedback_row"].isin(named["feedback_row"])].drop(columns="request_id")
    windowed = rest.merge(slots, on=["user_id", "isbn"], how="inner")
    windowed = windowed[
        (windowed["shown_at"] <= windowed["created_at"])
        & (windowed["created_at"] <= windowed["shown_at"] + window)
    ]
    windowed = windowed.sort_values("shown_at").drop_duplicates("feedback_row", keep="last")
    clicks = pd.concat([named, windowed], ignore_index=True)
    clicks = clicks.sort_values("created_at").drop_duplicates(["request_id", "position"], keep="first")
    clicks = clicks.assign(positive=is_positive(clicks["rating"], min_explicit_rating).astype(bool))
    return clicks[["request_id", "position", "isbn", "rating", "positive", "created_at"]].reset_index(
        drop=True
    )


def per_impression(impressions: pd.DataFrame, clicks: pd.DataFrame) -> pd.DataFrame:
    """Impressions with clicked (any attributed interaction), positive and reciprocal_rank (1 / the
    best position clicked, 0 when none)."""
    by_request = clicks.groupby("request_id").agg(best=("position", "min"), positive=("positive", "any"))
    out = impressions.merge(by_request, left_on="request_id", right_index=True, how="left")
    out["clicked"] = out["best"].notna()
    out["positive"] = out["positive"].fillna(False).astype(bool)
    out["reciprocal_rank"] = np.where(out["clicked"], 1.0 / out["best"].fillna(1), 0.0)
    return out.drop(columns="best")


def per_reader(table: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """Per reader of `per_impression`'s table: lists and the sum of each of `columns` over them."""
    return table.groupby("user_id").agg(lists=("request_id", "size"), **{c: (c, "sum") for c in columns})


def online_metrics(
    impressions: pd.DataFrame,
    books: pd.DataFrame,
    clicks: pd.DataFrame,
    catalog_size: int,
    head_isbns: set[str],
    by: tuple[str, ...] = ("model_version", "arm", "day"),
    confidence: float = 0.95,
) -> pd.DataFrame:
    """One row per group of `by` (any of model_version, arm, shown, day): impressions, click-through
    and positive rate at K and mean reciprocal rank, each with its interval (readers as the unit:
    `pipeline.statistics.ratio_interval`), catalog coverage of the served lists and the share of
    served slots outside the popular head. Rates of shadow lists are NaN (nobody saw them)."""
    table = per_impression(impressions.assign(day=impressions["created_at"].dt.strftime("%Y-%m-%d")), clicks)
    served = books.merge(table[["request_id", *by]], on="request_id")
    rows = []
    for key, group in table.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        seen = group[group["shown"].astype(bool)]
        readers = per_reader(seen, ("clicked", "positive", "reciprocal_rank"))
        rates = {}
        for name, column in (("ctr", "clicked"), ("positive_rate", "positive"), ("mrr", "reciprocal_rank")):
            rate, low, high = (
                ratio_interval(readers[column], readers["lists"], confidence)
                if len(readers)
                else (math.nan,) * 3
            )
            rates |= {name: rate, f"{name}_low": low, f"{name}_high": high}
        slots = served.loc[served["request_id"].isin(group["request_id"]), "isbn"]
        rows.append(
            {
                **dict(zip(by, key, strict=True)),
                "impressions": len(group),
                "shown": len(seen),
                "readers": len(readers),
                **rates,
                "coverage": slots.nunique() / catalog_size if catalog_size else math.nan,
                "long_tail_share": float((~slots.isin(head_isbns)).mean()) if len(slots) else math.nan,
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class ExperimentPlan:
    """An A/B experiment as started (`bookrec experiment set`): which versions, since when, the
    arm assignment's salt and share, and the readers each arm needs (the planned size)."""

    id: str
    started_at: datetime
    salt: str
    challenger_share: float
    production_version: str
    challenger_version: str
    planned_challenger: int
    planned_production: int
    baseline: float  # the click-through the size was planned from
    reader_sd: float  # its spread per reader (delta method)
    ended_at: datetime | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def experiment_lists(impressions: pd.DataFrame, plan: ExperimentPlan) -> pd.DataFrame:
    """The experiment's evidence: lists shown on the recommendations surface while it ran, by its
    production version in the production arm and its challenger version in the challenger arm (not
    similar-book or new-reader lists, not lists of other versions or of another experiment)."""
    created = impressions["created_at"]
    during = created >= pd.Timestamp(plan.started_at)
    if plan.ended_at is not None:
        during &= created < pd.Timestamp(plan.ended_at)
    arm, version = impressions["arm"], impressions["model_version"].astype(str)
    ours = ((arm == "production") & (version == plan.production_version)) | (
        (arm == "challenger") & (version == plan.challenger_version)
    )
    surface = impressions["surface"] == EXPERIMENT_SURFACE
    return impressions[impressions["shown"].astype(bool) & surface & during & ours]


@dataclass(frozen=True)
class ExperimentResult:
    """Challenger minus production in the share of an experiment's lists with `metric` (clicked or
    positive), readers as the unit; the arms' rates, readers and lists; the planned size."""

    experiment: str
    metric: str
    production_rate: float
    challenger_rate: float
    difference: float
    low: float
    high: float
    production_readers: int
    challenger_readers: int
    production_lists: int
    challenger_lists: int
    planned_production: int
    planned_challenger: int

    @property
    def reached(self) -> bool:
        """Both arms hold their planned number of readers (before that, no decision: no peeking)."""
        return (
            self.production_readers >= self.planned_production
            and self.challenger_readers >= self.planned_challenger
        )

    def non_inferior(self, online_margin: float) -> bool:
        """The interval's lower end at or above -online_margin x production's rate (NaN never is)."""
        return bool(self.low == self.low and self.low >= -online_margin * self.production_rate)

    def as_dict(self) -> dict:
        return asdict(self) | {"reached": self.reached}

    def describe(self, online_margin: float) -> str:
        """The comparison in one line, as the report, the Monitoring page and the simulator show it."""
        bar = -online_margin * self.production_rate
        verdict = ("non-inferior" if self.non_inferior(online_margin) else "NOT non-inferior") + (
            "" if self.reached else " (planned size not reached: no decision yet)"
        )
        return (
            f"{self.metric}: challenger {self.challenger_rate:.4f} ({self.challenger_readers} readers, "
            f"{self.challenger_lists} lists) - production {self.production_rate:.4f} "
            f"({self.production_readers} readers, {self.production_lists} lists) = {self.difference:+.4f} "
            f"[{self.low:+.4f}, {self.high:+.4f}]; planned readers {self.planned_challenger} / "
            f"{self.planned_production}; margin -{online_margin} x production = {bar:+.4f}: {verdict}"
        )


def experiment_result(
    impressions: pd.DataFrame,
    clicks: pd.DataFrame,
    plan: ExperimentPlan,
    metric: str = "clicked",
    confidence: float = 0.95,
) -> ExperimentResult:
    """The one comparison of an experiment's arms behind `bookrec experiment report`, `experiment
    promote` (the gate), the Monitoring page and the simulator."""
    table = per_impression(experiment_lists(impressions, plan), clicks)
    arms = {
        arm: per_reader(table[table["arm"] == arm], (metric,)).astype(float)
        for arm in ("challenger", "production")
    }
    result = ratio_difference(
        arms["challenger"][metric].to_numpy(),
        arms["challenger"]["lists"].to_numpy(),
        arms["production"][metric].to_numpy(),
        arms["production"]["lists"].to_numpy(),
        confidence,
    )
    return ExperimentResult(
        plan.id,
        metric,
        float(result.production),
        float(result.challenger),
        float(result.difference),
        float(result.low),
        float(result.high),
        int(result.production_readers),
        int(result.challenger_readers),
        int(arms["production"]["lists"].sum()),
        int(arms["challenger"]["lists"].sum()),
        plan.planned_production,
        plan.planned_challenger,
    )
