"""The protocol, part two: the seeded per-user random split (pure)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.config import PreprocessParams

TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "validation", "test")


def split_sizes(n_rows: np.ndarray, params: PreprocessParams) -> tuple[np.ndarray, np.ndarray]:
    """Per user: floor(f * n) test rows (at least 1, and one row always stays for training) and validation
    rows from the rest (at least 1 when `min_rows_for_validation` remain)."""
    n_rows = np.asarray(n_rows, dtype=np.int64)
    # The epsilon keeps floor(0.2 * 15) at 3 whatever the float rounding.
    n_test = np.maximum(1, np.floor(params.test_fraction * n_rows + 1e-9).astype(np.int64))
    n_test = np.minimum(n_test, n_rows - 1).clip(min=0)
    rest = n_rows - n_test
    n_validation = np.maximum(1, np.floor(params.validation_fraction * rest + 1e-9).astype(np.int64))
    n_validation = np.where(rest >= params.min_rows_for_validation, np.minimum(n_validation, rest - 1), 0)
    return n_test, n_validation


def assign_splits(users: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """A split label (TRAIN, VALIDATION, TEST) for each row, given each row's user.

    Within a user the rows are put in a random order drawn from `params.seed`; the first ones go to
    test, the next ones to validation. The same input order and seed give the same split.
    """
    users = np.asarray(users)
    rng = np.random.default_rng(params.seed)
    shuffle_key = rng.random(len(users))
    order = np.lexsort((shuffle_key, users))
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    n_rows = np.diff(np.r_[starts, len(users)])
    rank = np.arange(len(users)) - np.repeat(starts, n_rows)
    n_test, n_validation = split_sizes(n_rows, params)
    n_test_row = np.repeat(n_test, n_rows)
    n_validation_row = np.repeat(n_validation, n_rows)
    label_sorted = np.where(
        rank < n_test_row, TEST, np.where(rank < n_test_row + n_validation_row, VALIDATION, TRAIN)
    )
    labels = np.empty(len(users), dtype=np.int8)
    labels[order] = label_sorted
    return labels


def split_interactions(interactions: pd.DataFrame, params: PreprocessParams) -> dict[str, pd.DataFrame]:
    labels = assign_splits(interactions["user_idx"].to_numpy(), params)
    return {
        name: interactions[labels == code].reset_index(drop=True) for code, name in enumerate(SPLIT_NAMES)
    }
