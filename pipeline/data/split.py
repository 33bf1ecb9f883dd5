"""The protocol, part two: the stable split (pure).

Each interaction's split is a function of the reader's id, the book's ISBN and the seed alone: a keyed
hash (BLAKE2b, the seed as key) of (User-ID, ISBN) maps the pair to a number u in [0, 1); the pair
is test when u < test_fraction, validation when u < test_fraction + validation_fraction * (1 -
test_fraction), and train otherwise. So adding, removing or reordering other rows (new feedback, a
k-core that grows) never moves an interaction from one split to another, and the gate can compare
two models trained on different data versions on the same held-out pairs.

The per-reader fractions (20% test, 10% of the rest validation) hold in expectation rather than
exactly: a reader with few interactions may have none in test (they are then not evaluated) or none
in train (they are then scored from their side features, as a new reader would be).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from pipeline.config import PreprocessParams

TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "validation", "test")


def pair_hash(user_ids: pd.Series, isbns: pd.Series, seed: int) -> np.ndarray:
    """A number in [0, 1) per (User-ID, ISBN), the same on every machine and for every row order."""
    key = int(seed).to_bytes(8, "little", signed=True)
    values = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(f"{u}\x1f{i}".encode(), digest_size=8, key=key).digest(), "little")
            for u, i in zip(user_ids.astype(str), isbns.astype(str), strict=True)
        ),
        dtype=np.uint64,
        count=len(user_ids),
    )
    return values / np.float64(2**64)


def assign_splits(user_ids: pd.Series, isbns: pd.Series, params: PreprocessParams) -> np.ndarray:
    """A split label (TRAIN, VALIDATION, TEST) for each (User-ID, ISBN) row."""
    u = pair_hash(user_ids, isbns, params.seed)
    validation_below = params.test_fraction + params.validation_fraction * (1 - params.test_fraction)
    return np.where(u < params.test_fraction, TEST, np.where(u < validation_below, VALIDATION, TRAIN)).astype(
        np.int8
    )


def split_fingerprint(params: PreprocessParams) -> str:
    """Names the split rule: two data versions with the same fingerprint put every (reader, book)
    pair they share in the same split, so one's training pairs never meet the other's test pairs."""
    return (
        f"pair-hash-blake2b-v1:seed={params.seed}:test={params.test_fraction:g}:"
        f"validation={params.validation_fraction:g}"
    )


def split_interactions(
    interactions: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, params: PreprocessParams
) -> dict[str, pd.DataFrame]:
    """`interactions` (user_idx, item_idx, ...) split by `assign_splits` of their raw ids, which
    `users` (user_idx, user_id) and `items` (item_idx, isbn) map them back to."""
    user_ids = users.set_index("user_idx")["user_id"].reindex(interactions["user_idx"])
    isbns = items.set_index("item_idx")["isbn"].reindex(interactions["item_idx"])
    labels = assign_splits(user_ids.reset_index(drop=True), isbns.reset_index(drop=True), params)
    return {
        name: interactions[labels == code].reset_index(drop=True) for code, name in enumerate(SPLIT_NAMES)
    }
