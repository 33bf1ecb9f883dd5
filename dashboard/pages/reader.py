"""For a reader: who they are, what they read, what the production model recommends next."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from cards import cards_from, grid_html
from data_access import feedback_store, log_list, model_if_ready, online

st.header("Recommendations for a reader")
found = model_if_ready()  # the form shows at once; the page reruns when a loading model is there
examples = found[1].example_users() if found else []
left, right = st.columns([2, 1])
# Fixed keys and a placeholder that does not depend on the model: what a visitor types while the model
# loads must survive the rerun that brings it (a widget whose parameters change is a new widget).
typed = left.text_input("Book-Crossing User-ID", placeholder="a reader's User-ID", key="reader_user_id")
picked = right.selectbox("or an example reader", ["—", *examples], key="reader_example")
user_id = (typed or (picked if picked != "—" else "")).strip()
k = st.slider("How many recommendations", 5, 30, 10)

if found is None:
    st.stop()
info, model = found
if not user_id:
    st.info("Enter a User-ID or pick an example reader.")
    st.stop()
index = model.known_user(user_id)
if index is None:
    st.warning(
        f"No reader with User-ID {user_id!r} is known to this model. "
        "Try an example reader, or the New reader page for someone new."
    )
    st.stop()

person = model.users.iloc[index]
age = "unknown" if pd.isna(person.get("age")) else int(person.get("age"))
location = ", ".join(
    str(x) for x in (person.get("city"), person.get("region"), person.get("country")) if isinstance(x, str)
)
st.markdown(f"**Reader {user_id}** · age {age} · {location or 'location unknown'}")

store = feedback_store()
live, liked_live = model.live_history(store, user_id)
read = model.read_items(user_id)
with st.expander(f"Books read ({len(read)} known to the model, {len(live)} since)", expanded=False):
    shown = model.books(read[:24])
    st.html(grid_html(cards_from(shown)))

recommendations = model.recommend(
    [user_id],
    k,
    extra_reads={user_id: liked_live},
    extra_excluded={user_id: live},
    blocked={user_id: online().blocked},
)
shown_list = (user_id, k, tuple(recommendations["isbn"]))
if st.session_state.get("shown_list") != shown_list:  # a rerun that shows the same list is one impression
    st.session_state["shown_list"] = shown_list
    st.session_state["request_id"] = log_list(model, user_id, "dashboard", recommendations["isbn"])
books = model.books(model.item_indices(recommendations["isbn"]))
reasons = []
for isbn, score in zip(recommendations["isbn"], recommendations["score"], strict=True):
    because = model.because_you_read(user_id, isbn, extra_reads=liked_live)
    title = model.book(because)["title"] if because else None
    reasons.append(f"score {score:.3f}" + (f" · because you read “{title}”" if title else ""))
st.subheader(f"Top {k} for reader {user_id}")
st.html(grid_html(cards_from(books, reasons)))

with st.form("feedback", clear_on_submit=True):
    st.markdown("**Tell us what you read** (recommendations update at once, no retraining)")
    options = {f"{row.title} — {row.author}": row.isbn for row in books.itertuples()}
    choice = st.selectbox("Book", list(options))
    rating = st.select_slider("Rating", options=["read, no rating", *range(1, 11)], value="read, no rating")
    if st.form_submit_button("I read this"):
        value = 0 if rating == "read, no rating" else int(rating)
        store.add(user_id, options[choice], value, st.session_state.get("request_id"))
        st.rerun()
