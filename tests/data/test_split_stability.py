"""The split does not move when data arrives: 1,000 feedback rows for new and existing readers go
through ingest and preprocess, and every interaction present before keeps its split."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tests.conftest import run


def labelled_pairs(ws) -> pd.Series:
    from pipeline import io

    users = io.read_parquet(ws.processed / "users.parquet").set_index("user_idx")["user_id"]
    items = io.read_parquet(ws.processed / "items.parquet").set_index("item_idx")["isbn"]
    parts = []
    for name in ("train", "validation", "test"):
        frame = io.read_parquet(ws.processed / f"{name}.parquet")
        parts.append(
            pd.Series(
                name, index=pd.MultiIndex.from_arrays([users[frame["user_idx"]], items[frame["item_idx"]]])
            )
        )
    return pd.concat(parts)


def test_a_thousand_new_feedback_rows_move_no_existing_interaction(project, synthetic_bx):
    from pipeline import stages
    from pipeline.config import Workspace
    from pipeline.storage.feedback import write_export

    run(["bookrec", "data", "fetch", "--source", str(synthetic_bx.folder), "--allow-modified"], project)
    ws, params = Workspace.load(project)
    stages.ingest(ws, params)
    stages.preprocess(ws, params)
    before = labelled_pairs(ws)

    rng = np.random.default_rng(0)
    isbns = sorted(synthetic_bx.shelf_of_book)
    existing = rng.choice(sorted(synthetic_bx.group_of_user), 500)
    newcomers = np.repeat([f"web-{n}" for n in range(100)], 5)
    feedback = pd.DataFrame(
        {
            "User-ID": np.concatenate([existing, newcomers]),
            "ISBN": rng.choice(isbns, 1000),
            "Book-Rating": rng.choice([0, 0, 7, 9, 3], 1000),
        }
    ).drop_duplicates(["User-ID", "ISBN"])
    write_export(feedback, ws.feedback)
    stages.ingest(ws, params)
    counts = stages.preprocess(ws, params)
    after = labelled_pairs(ws)

    assert counts["users"] > synthetic_bx.n_users  # the newcomers made it into the data
    assert len(after) > len(before)
    kept = before.index.intersection(after.index)
    assert len(kept) == len(before)  # adding data never removes an interaction from the 5-core
    moved = (before[kept] != after[kept]).sum()
    assert moved == 0, f"{moved} of {len(kept)} interactions changed split"
