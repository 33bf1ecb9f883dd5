"""Monitoring: what readers did with the lists they were shown, per model version and arm, over time;
how production's data moved from the version before it."""

from __future__ import annotations

import json

import altair as alt
import pandas as pd
import streamlit as st
from data_access import _store, model_or_stop, online, online_report, root, version_info

from pipeline.config import load_params

info, model = model_or_stop()
st.header("Online metrics")
days = st.slider("Days", 1, 90, 30)
report = online_report(days)
experiment = online().rules.current.experiment
st.caption(
    f"{report.impressions} lists served in the last {days} days (API and dashboard), {report.clicks} of "
    f"their books read or rated since. Experiment: **{experiment.mode}**"
    + (
        f", challenger share {experiment.challenger_share:.0%}, salt `{experiment.salt}`"
        if experiment.mode == "ab"
        else ""
    )
    + ". Feedback counts for a list when it names the list's request id, or when the book was in the latest "
    "list shown to that reader within the attribution window."
)


def data_drift() -> None:
    """How production's training data moved from the version that served before it was registered."""
    st.subheader("Data drift: production against the version before it")
    tags = info.tags
    if "data_profile" not in tags:
        st.caption(f"v{info.version} was registered before data profiles were recorded.")
        return
    current, moved = json.loads(tags["data_profile"]), json.loads(tags.get("data_drift", "{}"))
    against = tags.get("data_drift_against")
    if not against:
        st.caption(
            f"v{info.version} is the first version: {current['readers']} readers, {current['books']} books."
        )
        return
    previous_tags = version_info(_store(), against).tags
    previous = json.loads(previous_tags["data_profile"]) if "data_profile" in previous_tags else None
    rows = [
        ("readers", previous and previous["readers"], current["readers"]),
        ("books", previous and previous["books"], current["books"]),
        ("interactions", previous and previous["interactions"], current["interactions"]),
        (
            "share of raw ratings from live feedback",
            previous and previous["feedback_share"],
            current["feedback_share"],
        ),
        ("new readers", None, moved.get("new_readers")),
        ("new books", None, moved.get("new_books")),
        ("rating distribution distance (total variation)", None, moved.get("rating_distribution_distance")),
    ]
    st.dataframe(
        pd.DataFrame(rows, columns=["figure", f"v{against}", f"v{info.version}"]).astype(str),
        hide_index=True,
        width="stretch",
    )
    bars = [
        {"rating": int(r), "share": share, "version": f"v{version}"}
        for version, profile in ((against, previous), (info.version, current))
        if profile
        for r, share in profile["rating_distribution"].items()
    ]
    st.altair_chart(
        alt.Chart(pd.DataFrame(bars))
        .mark_bar()
        .encode(x="rating:O", xOffset="version:N", y="share:Q", color="version:N"),
        width="stretch",
    )


data_drift()
if report.by_day.empty:
    st.info("No list has been served yet: ask the API or the other pages for recommendations.")
    st.stop()

by_day = report.by_day.assign(
    series=lambda f: "v" + f["model_version"].astype(str) + " " + f["arm"],
    day=lambda f: pd.to_datetime(f["day"]),
)
base = alt.Chart(by_day).encode(
    x=alt.X("day:T", title="day"), color=alt.Color("series:N", title="version, arm")
)
ctr = base.mark_line(point=True).encode(
    y=alt.Y("ctr:Q", title="click-through rate"), tooltip=["series", "day", "ctr", "shown"]
)
band = base.mark_area(opacity=0.2).encode(y="ctr_low:Q", y2="ctr_high:Q")
st.subheader("Click-through rate per day (95% interval)")
st.altair_chart(band + ctr, width="stretch")

left, right = st.columns(2)
left.subheader("Catalog coverage of served lists")
left.altair_chart(base.mark_line(point=True).encode(y=alt.Y("coverage:Q", title="coverage")), width="stretch")
right.subheader("Share of long-tail books served")
right.altair_chart(
    base.mark_line(point=True).encode(y=alt.Y("long_tail_share:Q", title="long-tail share")), width="stretch"
)

st.subheader("Per version and arm")
shown = report.by_version.copy()
for metric in ("ctr", "positive_rate", "mrr"):
    shown[metric] = [
        f"{v:.4f} [{lo:.4f}, {hi:.4f}]" if pd.notna(v) else "n/a (shadow)"
        for v, lo, hi in zip(shown[metric], shown[f"{metric}_low"], shown[f"{metric}_high"], strict=True)
    ]
columns = [
    "model_version",
    "arm",
    "impressions",
    "shown",
    "readers",
    "ctr",
    "positive_rate",
    "mrr",
    "coverage",
    "long_tail_share",
]
st.dataframe(shown[columns], hide_index=True, width="stretch")

st.subheader("Challenger against production")
plan = report.experiment
if plan is None:
    st.caption("No A/B experiment recorded (`bookrec experiment set ab` starts one).")
else:
    st.caption(
        f"Experiment `{plan.id}`: v{plan.challenger_version} against v{plan.production_version} since "
        f"{plan.started_at:%Y-%m-%d %H:%M} UTC"
        + (f", ended {plan.ended_at:%Y-%m-%d %H:%M} UTC" if plan.ended_at else "")
        + ". Only its recommendation lists count (not similar-book or new-reader lists), readers are the "
        "unit, and no decision is taken before the planned size (the same figures as `bookrec experiment report`)."
    )
    margin = load_params(root()).gate.online_margin
    for comparison in (report.comparison, report.comparison_positive):
        st.markdown(comparison.describe(margin))
