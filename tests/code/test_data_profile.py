"""Data profiles and drift on hand-made tables where the answer is known."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.data.profile import data_profile, drift

REPORT = {"ratings": {"rows_written": 10, "notes": {"rows_added_from_feedback": 2}}}


def _ratings(values):
    return pd.DataFrame({"rating": values})


def test_profile_counts_and_rating_shares():
    profile = data_profile([_ratings([0, 0, 8]), _ratings([3])], n_readers=2, n_books=3, ingest_report=REPORT)
    assert (profile["readers"], profile["books"], profile["interactions"]) == (2, 3, 4)
    assert profile["rating_distribution"]["0"] == 0.5 and profile["rating_distribution"]["8"] == 0.25
    assert sum(profile["rating_distribution"].values()) == pytest.approx(1.0)
    assert profile["feedback_interactions"] == 2 and profile["feedback_share"] == 0.2


def test_drift_between_two_versions():
    before = data_profile([_ratings([0, 0, 0, 0])], 2, 2, {"ratings": {"rows_written": 4}})
    after = data_profile([_ratings([0, 0, 8, 8])], 3, 2, REPORT)
    moved = drift(before, after, ({"u1", "u2"}, {"a", "b"}), ({"u1", "u2", "u3"}, {"a", "c"}))
    assert (moved["new_readers"], moved["dropped_readers"], moved["new_books"], moved["dropped_books"]) == (
        1,
        0,
        1,
        1,
    )
    assert moved["rating_distribution_distance"] == pytest.approx(0.5)  # half the mass moved from 0 to 8
    assert moved["feedback_share"] == [0.0, 0.2]
    assert drift(None, after, None, ({"u1"}, {"a"})) == {}  # a first version has nothing to compare with
    assert set(drift(None, after, ({"u1"}, {"a"}), ({"u1"}, {"a"}))) == {
        "new_readers",
        "dropped_readers",
        "new_books",
        "dropped_books",
    }
