"""New reader: age, location and a few liked books give recommendations at once (cold start, no retraining)."""

from __future__ import annotations

import streamlit as st
from cards import cards_from, grid_html
from data_access import log_list, model_or_stop, online

info, model = model_or_stop()
from pipeline.serving.service import Reader  # noqa: E402  (after the model: imports torch)

st.header("Recommendations for a new reader")
left, right = st.columns(2)
age = left.number_input("Age", min_value=0, max_value=120, value=30, step=1)
location = right.text_input("Location", value="toronto, ontario, canada", help="city, region, country")
popular = model.books(model.popularity.argsort()[::-1][:3000])
options = {f"{row.title} — {row.author}": row.isbn for row in popular.itertuples()}
liked = st.multiselect("Books you liked (optional)", list(options), max_selections=10)
k = st.slider("How many recommendations", 5, 30, 10)

reader = Reader(
    age=float(age) if age else None,
    location=location or None,
    liked_isbns=tuple(options[label] for label in liked),
)
recommendations = model.recommend_new_reader(reader, k, blocked=online().blocked)
log_list(model, "<new reader>", "new_reader", recommendations["isbn"])
books = model.books(model.item_indices(recommendations["isbn"]))
st.subheader(f"Top {k} for a {age}-year-old reader in {location or 'an unknown place'}")
st.html(grid_html(cards_from(books, [f"score {s:.3f}" for s in recommendations["score"]])))
