"""The gate's re-measurement of production on a challenger's split: a registered model scored in another
id space gives every book it knows the score the model itself gives, and -inf to books it never saw."""

from __future__ import annotations

import numpy as np

from pipeline import io
from pipeline.config import Workspace
from pipeline.evaluation.evaluate import ndcg_at
from pipeline.serving.remap import RemappedRecommender
from pipeline.serving.service import BookRecommender
from pipeline.stages import evaluation_data
from pipeline.storage.bundle import load_bundle


def test_production_scored_on_a_reordered_split_keeps_its_scores(trained_project):
    ws, params = Workspace.load(trained_project)
    served = BookRecommender(load_bundle(trained_project / "models" / "ncf"))
    users = io.read_parquet(ws.processed / "users.parquet")
    items = io.read_parquet(ws.processed / "items.parquet")
    data = evaluation_data(ws, params, "test")
    # The challenger's split: the same books in reverse order and one book production never saw.
    n = len(items)
    moved = items.assign(item_idx=n - 1 - items["item_idx"])
    moved.loc[moved["item_idx"] == 0, "isbn"] = "0000000000"
    order = moved.sort_values("item_idx")["isbn"].astype(str).to_numpy()
    history = data.train[:, ::-1].tocsr()  # the same reads in the new order
    remapped = RemappedRecommender(served, users, moved, history)

    readers = np.arange(min(20, len(users)))
    scores = remapped.score_users(readers)

    engine = served.engines["train"]
    raw = users.sort_values("user_idx")["user_id"].astype(str).to_numpy()[readers]
    rows = np.array([served.known_user(r) for r in raw])
    own = engine.score_rows(rows, engine.user_features[rows], engine.history[rows])
    known = order != "0000000000"
    np.testing.assert_allclose(scores[:, known], own[:, served.item_indices(order[known])], rtol=1e-5)
    assert np.isneginf(scores[:, ~known]).all()
    # and the gate's measurement itself runs on it (the split of this project, in its own order)
    assert ndcg_at(RemappedRecommender(served, users, items, data.train), data, batch_size=64) > 0
