"""Models: the registry's versions with their aliases and metrics, accuracy against beyond-accuracy."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st
from data_access import serving_history, versions

st.header("Registered models")
try:
    table = versions()
except Exception as err:
    st.error(f"The model registry cannot be reached: {err}")
    st.stop()
if table.empty:
    st.info("No model has been registered yet.")
    st.stop()
st.dataframe(table, hide_index=True, width="stretch")

st.subheader("Serving history")
st.caption(
    "Every move of the production alias, by the gate, by `bookrec registry promote`/`rollback`, or by "
    "hand in the MLflow UI. `bookrec registry rollback` returns to the version that served before the current one."
)
moves = serving_history()
if moves.empty:
    st.info("Production has never been set.")
else:
    st.dataframe(moves.iloc[::-1], hide_index=True, width="stretch")  # newest first

numeric = table.copy()
for column in ("ndcg@10", "recall@10", "coverage@10"):
    numeric[column] = pd.to_numeric(numeric[column], errors="coerce")
numeric["label"] = "v" + numeric["version"] + numeric["aliases"].map(lambda a: f" ({a})" if a else "")
chart = (
    alt.Chart(numeric.dropna(subset=["ndcg@10", "coverage@10"]))
    .mark_circle(size=140)
    .encode(
        x=alt.X("coverage@10", title="catalog coverage@10 (beyond accuracy)"),
        y=alt.Y("ndcg@10", title="NDCG@10 (accuracy)"),
        color=alt.Color("gate", title="gate"),
        tooltip=["label", "ndcg@10", "recall@10", "coverage@10", "gate"],
    )
)
labels = chart.mark_text(dy=-12).encode(text="label")
st.subheader("Accuracy against coverage, by version")
st.altair_chart(chart + labels, width="stretch")
