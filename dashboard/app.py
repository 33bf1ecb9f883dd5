"""bookrec dashboard: one entry point; each page is a module under pages/."""

from __future__ import annotations

import streamlit as st
from data_access import Loading, NoModel, current, serving_status

st.set_page_config(page_title="bookrec", page_icon=":material/menu_book:", layout="wide")

pages = [
    st.Page("pages/reader.py", title="For a reader", icon=":material/person:", default=True),
    st.Page("pages/similar.py", title="Similar books", icon=":material/search:"),
    st.Page("pages/new_reader.py", title="New reader", icon=":material/person_add:"),
    st.Page("pages/models.py", title="Models", icon=":material/inventory_2:"),
    st.Page("pages/monitoring.py", title="Monitoring", icon=":material/monitoring:"),
]

with st.sidebar:
    st.markdown("### :material/menu_book: bookrec")
    try:
        info, _ = current()
        tags = info.tags
        state = serving_status()
        if state.status == "ok":
            st.markdown(f"**Model** `bookrec-ncf` v{info.version} (production)")
        else:
            st.markdown(f"**Model** `bookrec-ncf` v{info.version} (serving; **degraded**)")
            st.error(f"Degraded: {state.error}. Still serving v{state.serving_version}.")
        st.caption(f"Trained {tags.get('trained_at', '?')} · registered {info.created}")
        st.caption(
            f"Data: processed `{tags.get('split_version', '?')[:10]}` · raw `{tags.get('data:data/raw', '?')[:10]}`"
        )
        st.caption(f"Code: `{tags.get('git_commit', '?')[:10]}`")
        for label, key in (
            ("NDCG@10", "metric.ndcg_at_10"),
            ("Recall@10", "metric.recall_at_10"),
            ("Coverage@10", "metric.coverage_at_10"),
            ("Personalization@10", "metric.personalization_at_10"),
        ):
            st.markdown(f"{label} **{float(tags.get(key, 'nan')):.4f}**")
    except Loading as err:
        st.markdown("**Model** `bookrec-ncf` (production)")
        st.caption(str(err))  # the page reruns by itself when it is loaded
    except NoModel as err:
        st.warning(str(err))

st.navigation(pages).run()
