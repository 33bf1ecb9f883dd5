"""The protocol's splitter and k-core: exact sizes on hand-made input, invariants on random input."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import PreprocessParams
from pipeline.data.preprocess import build_interactions, k_core
from pipeline.data.split import TEST, TRAIN, VALIDATION, assign_splits, split_interactions, split_sizes

PARAMS = PreprocessParams(
    min_explicit_rating=5,
    user_core=5,
    item_core=5,
    test_fraction=0.2,
    validation_fraction=0.1,
    min_rows_for_validation=3,
    seed=42,
)


def test_split_sizes_by_hand():
    n_test, n_validation = split_sizes(np.array([1, 2, 3, 4, 5, 9, 10, 15, 34, 35]), PARAMS)
    assert n_test.tolist() == [0, 1, 1, 1, 1, 1, 2, 3, 6, 7]
    # rest = n - test: 1, 1, 2, 3, 4, 8, 8, 12, 28, 28
    assert n_validation.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 2, 2]


pairs_strategy = st.lists(
    st.tuples(st.integers(0, 30), st.integers(0, 40)), min_size=1, max_size=400, unique=True
)


@settings(max_examples=150, deadline=None)
@given(pairs=pairs_strategy, seed=st.integers(0, 2**31))
def test_split_is_disjoint_covers_every_row_and_keeps_training_rows(pairs, seed):
    params = PARAMS.model_copy(update={"seed": seed})
    frame = pd.DataFrame(pairs, columns=["user_idx", "item_idx"]).astype("int32").assign(rating=np.int8(0))
    labels = assign_splits(frame["user_idx"].to_numpy(), params)
    assert np.array_equal(labels, assign_splits(frame["user_idx"].to_numpy(), params))  # deterministic
    splits = split_interactions(frame, params)
    assert sum(len(s) for s in splits.values()) == len(frame)
    keys = [set(map(tuple, s[["user_idx", "item_idx"]].to_numpy().tolist())) for s in splits.values()]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    train_users = set(splits["train"]["user_idx"])
    assert set(splits["test"]["user_idx"]) <= train_users
    assert set(splits["validation"]["user_idx"]) <= train_users
    sizes = frame.groupby("user_idx").size()
    n_test, n_validation = split_sizes(sizes.to_numpy(), params)
    got = pd.Series(labels).groupby(frame["user_idx"].to_numpy())
    assert (got.apply(lambda s: (s == TEST).sum()).to_numpy() == n_test).all()
    assert (got.apply(lambda s: (s == VALIDATION).sum()).to_numpy() == n_validation).all()
    assert (got.apply(lambda s: (s == TRAIN).sum()).to_numpy() >= 1).all()


def test_split_changes_with_seed_but_not_with_repeat():
    users = np.repeat(np.arange(50), 20)
    a = assign_splits(users, PARAMS)
    assert np.array_equal(a, assign_splits(users, PARAMS))
    assert not np.array_equal(a, assign_splits(users, PARAMS.model_copy(update={"seed": 43})))


def naive_k_core(pairs: set[tuple[int, int]], k_user: int, k_item: int) -> set[tuple[int, int]]:
    while True:
        users = pd.Series([u for u, _ in pairs]).value_counts() if pairs else pd.Series(dtype=int)
        items = pd.Series([i for _, i in pairs]).value_counts() if pairs else pd.Series(dtype=int)
        kept = {(u, i) for u, i in pairs if users[u] >= k_user and items[i] >= k_item}
        if kept == pairs:
            return kept
        pairs = kept


@settings(max_examples=150, deadline=None)
@given(pairs=pairs_strategy, k_user=st.integers(1, 6), k_item=st.integers(1, 6))
def test_k_core_invariant_and_maximal(pairs, k_user, k_item):
    frame = pd.DataFrame(pairs, columns=["user_id", "isbn"])
    core = k_core(frame, k_user, k_item)
    if len(core):
        assert core["user_id"].value_counts().min() >= k_user
        assert core["isbn"].value_counts().min() >= k_item
    assert set(map(tuple, core.to_numpy().tolist())) == naive_k_core(set(pairs), k_user, k_item)
    assert len(k_core(core, k_user, k_item)) == len(core)  # idempotent


def test_build_interactions_by_hand():
    # u1 and u2 read books a, b; u3 read only a. With k = 2 for both sides, u3 goes, then nothing else.
    ratings = pd.DataFrame(
        {
            "user_id": ["1", "1", "2", "2", "3", "2", "1"],
            "isbn": ["A", "B", "A", "B", "A", "C", "Z"],
            "rating": [0, 9, 5, 0, 0, 3, 8],
        }
    ).astype({"rating": "int8"})
    users = pd.DataFrame(
        {
            "user_id": ["1", "2", "3"],
            "age": pd.array([30, None, 40], dtype="Int16"),
            "city": ["x", "y", "z"],
            "region": [None, None, None],
            "country": ["usa", "usa", None],
        }
    )
    books = pd.DataFrame({"isbn": ["A", "B", "C"], "title": ["ta", "tb", "tc"]})
    built = build_interactions(
        ratings, users, books, PARAMS.model_copy(update={"user_core": 2, "item_core": 2})
    )
    assert built.counts["ratings_with_isbn_in_catalog"] == 6  # Z is not in the catalog
    assert built.counts["positives"] == 5 and built.counts["dislikes"] == 1
    assert built.interactions[["user_idx", "item_idx"]].to_numpy().tolist() == [
        [0, 0],
        [0, 1],
        [1, 0],
        [1, 1],
    ]
    assert built.users["user_id"].tolist() == ["1", "2"] and built.items["isbn"].tolist() == ["A", "B"]
    assert built.dislikes.empty  # C fell out of the catalog of the core
