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
from datetime import timedelta

import numpy as np
import pandas as pd

from pipeline.data.protocol import is_positive

Z95 = 1.959964


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


def wilson(successes: float, n: float) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (NaN for n = 0)."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n**2)) / (1 + Z95**2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _mean_interval(values: np.ndarray) -> tuple[float, float, float]:
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    half = Z95 * float(values.std(ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return mean, mean - half, mean + half


def per_impression(impressions: pd.DataFrame, clicks: pd.DataFrame) -> pd.DataFrame:
    """Impressions with clicked (any attributed interaction), positive and reciprocal_rank (1 / the
    best position clicked, 0 when none)."""
    by_request = clicks.groupby("request_id").agg(best=("position", "min"), positive=("positive", "any"))
    out = impressions.merge(by_request, left_on="request_id", right_index=True, how="left")
    out["clicked"] = out["best"].notna()
    out["positive"] = out["positive"].fillna(False).astype(bool)
    out["reciprocal_rank"] = np.where(out["clicked"], 1.0 / out["best"].fillna(1), 0.0)
    return out.drop(columns="best")


def online_metrics(
    impressions: pd.DataFrame,
    books: pd.DataFrame,
    clicks: pd.DataFrame,
    catalog_size: int,
    head_isbns: set[str],
    by: tuple[str, ...] = ("model_version", "arm", "day"),
) -> pd.DataFrame:
    """One row per group of `by` (any of model_version, arm, shown, day): impressions, click-through
    and positive rate at K with 95% intervals, mean reciprocal rank with its interval, catalog
    coverage of the served lists and the share of served slots outside the popular head. Rates of
    shadow lists are NaN (nobody saw them)."""
    table = per_impression(impressions.assign(day=impressions["created_at"].dt.strftime("%Y-%m-%d")), clicks)
    served = books.merge(table[["request_id", *by]], on="request_id")
    rows = []
    for key, group in table.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        seen = group[group["shown"].astype(bool)]
        n = len(seen)
        ctr_low, ctr_high = wilson(seen["clicked"].sum(), n)
        pos_low, pos_high = wilson(seen["positive"].sum(), n)
        mrr, mrr_low, mrr_high = _mean_interval(seen["reciprocal_rank"].to_numpy(dtype=float))
        slots = served.loc[served["request_id"].isin(group["request_id"]), "isbn"]
        rows.append(
            {
                **dict(zip(by, key, strict=True)),
                "impressions": len(group),
                "shown": n,
                "ctr": seen["clicked"].mean() if n else math.nan,
                "ctr_low": ctr_low,
                "ctr_high": ctr_high,
                "positive_rate": seen["positive"].mean() if n else math.nan,
                "positive_rate_low": pos_low,
                "positive_rate_high": pos_high,
                "mrr": mrr,
                "mrr_low": mrr_low,
                "mrr_high": mrr_high,
                "coverage": slots.nunique() / catalog_size if catalog_size else math.nan,
                "long_tail_share": float((~slots.isin(head_isbns)).mean()) if len(slots) else math.nan,
            }
        )
    return pd.DataFrame(rows)


def compare_arms(impressions: pd.DataFrame, clicks: pd.DataFrame, metric: str = "clicked") -> dict:
    """Challenger minus production in the share of shown lists with `metric` (clicked or positive),
    with a 95% normal interval of the difference; the arms' own rates and counts."""
    table = per_impression(impressions[impressions["shown"].astype(bool)], clicks)
    arms = {}
    for arm in ("production", "challenger"):
        values = table.loc[table["arm"] == arm, metric].astype(float)
        arms[arm] = {"n": int(len(values)), "rate": float(values.mean()) if len(values) else math.nan}
    p, c = arms["production"], arms["challenger"]
    if not p["n"] or not c["n"]:
        return {"arms": arms, "difference": math.nan, "low": math.nan, "high": math.nan}
    difference = c["rate"] - p["rate"]
    half = Z95 * math.sqrt(p["rate"] * (1 - p["rate"]) / p["n"] + c["rate"] * (1 - c["rate"]) / c["n"])
    return {"arms": arms, "difference": difference, "low": difference - half, "high": difference + half}
