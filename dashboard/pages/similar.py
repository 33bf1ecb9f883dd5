"""Similar books: search the catalog by title or author; nearest books by the model's item vectors."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from cards import cards_from, grid_html
from data_access import log_list, model_or_stop, online

info, model = model_or_stop()
st.header("Books similar to a book")
query = st.text_input("Search by title or author", placeholder="e.g. harry potter, or grisham")
k = st.slider("How many similar books", 5, 30, 10)
if not query.strip():
    st.info("Type a few words of a title or an author's name.")
    st.stop()
found = model.search(query, limit=30)
if found.empty:
    st.warning(f"No book in the catalog matches {query!r}.")
    st.stop()
labels = {
    f"{row.title} — {row.author} ({'n.d.' if pd.isna(row.year) else row.year})": row.isbn
    for row in found.itertuples()
}
chosen = st.selectbox(f"{len(found)} matching books", list(labels))
isbn = labels[chosen]
st.html(grid_html(cards_from(model.books(model.item_indices([isbn])))))
similar = model.similar_books([isbn], k, blocked=online().blocked)
log_list(model, "<similar>", "similar", similar["similar_isbn"])
books = model.books(model.item_indices(similar["similar_isbn"]))
st.subheader("Nearest books")
st.html(grid_html(cards_from(books, [f"similarity {s:.3f}" for s in similar["score"]])))
