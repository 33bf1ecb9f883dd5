"""The protocol's splitter and k-core: exact sizes on hand-made input, invariants on random input."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import PreprocessParams
from pipeline.data.preprocess import build_interactions, k_core
from pipeline.data.split import TEST, TRAIN, VALIDATION, assign_splits, split_interactions

PARAMS = PreprocessParams(
    min_explicit_rating=5,
    user_core=5,
    item_core=5,
    test_fraction=0.2,
    validation_fraction=0.1,
    seed=42,
)


def frame_of(pairs) -> pd.DataFrame:
    return pd.DataFrame(pairs, columns=["user_id", "isbn"]).astype(str)


def test_a_pairs_split_is_its_keyed_hash_by_hand():
    import hashlib

    digest = hashlib.blake2b(b"276725\x1f034545104X", digest_size=8, key=(42).to_bytes(8, "little")).digest()
    u = int.from_bytes(digest, "little") / 2**64
    expected = TEST if u < 0.2 else VALIDATION if u < 0.28 else TRAIN
    pairs = frame_of([("276725", "034545104X")])
    assert assign_splits(pairs["user_id"], pairs["isbn"], PARAMS).tolist() == [expected]


pairs_strategy = st.lists(
    st.tuples(st.integers(0, 30), st.integers(0, 40)), min_size=1, max_size=400, unique=True
)


@settings(max_examples=150, deadline=None)
@given(
    pairs=pairs_strategy, seed=st.integers(0, 2**31), cut=st.integers(0, 400), shuffle=st.integers(0, 2**31)
)
def test_other_rows_never_move_a_pairs_split(pairs, seed, cut, shuffle):
    params = PARAMS.model_copy(update={"seed": seed})
    frame = frame_of(pairs)
    labels = pd.Series(
        assign_splits(frame["user_id"], frame["isbn"], params), index=pd.MultiIndex.from_frame(frame)
    )
    # a subset of the rows, in another order, with rows of new readers and books added
    other = frame.iloc[:cut].sample(frac=1.0, random_state=shuffle % 2**32)
    other = pd.concat([other, frame_of([(f"new{i}", f"isbn{i}") for i in range(20)])], ignore_index=True)
    again = pd.Series(
        assign_splits(other["user_id"], other["isbn"], params), index=pd.MultiIndex.from_frame(other)
    )
    common = labels.index.intersection(again.index)
    assert (labels[common] == again[common]).all()


def test_split_fractions_hold_on_many_rows_and_change_with_the_seed():
    users = np.repeat(np.arange(2000), 25).astype(str)
    isbns = np.tile(np.arange(25), 2000).astype(str)
    labels = assign_splits(pd.Series(users), pd.Series(isbns), PARAMS)
    shares = np.bincount(labels, minlength=3) / len(labels)
    assert abs(shares[TEST] - 0.2) < 0.01 and abs(shares[VALIDATION] - 0.08) < 0.01
    other = assign_splits(pd.Series(users), pd.Series(isbns), PARAMS.model_copy(update={"seed": 43}))
    assert (labels != other).mean() > 0.3


def test_split_interactions_maps_indices_back_to_raw_ids():
    interactions = pd.DataFrame({"user_idx": [0, 0, 1], "item_idx": [0, 1, 1], "rating": [0, 0, 0]})
    users = pd.DataFrame({"user_idx": [0, 1], "user_id": ["7", "8"]})
    items = pd.DataFrame({"item_idx": [0, 1], "isbn": ["A", "B"]})
    splits = split_interactions(interactions, users, items, PARAMS)
    raw = frame_of([("7", "A"), ("7", "B"), ("8", "B")])
    labels = assign_splits(raw["user_id"], raw["isbn"], PARAMS)
    for code, name in enumerate(("train", "validation", "test")):
        assert (
            splits[name][["user_idx", "item_idx"]].values.tolist()
            == interactions[labels == code][["user_idx", "item_idx"]].values.tolist()
        )


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
