"""What a version's data looks like, and how it moved from the previous version's (pure).

A profile is small enough to travel as a registry tag: readers, books, interactions, the rating
distribution (0 = implicit, 1..10 explicit, shares of all kept interactions) and how many of the raw
ratings came from live feedback. Drift compares two profiles and the two id sets.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

RATINGS = range(11)


def data_profile(interactions: Iterable[pd.DataFrame], n_readers: int, n_books: int, ingest_report: dict) -> dict:
    """`interactions`: the kept tables (train, validation, test, dislikes), each with a rating column."""
    ratings = pd.concat([frame["rating"] for frame in interactions], ignore_index=True)
    counts = ratings.value_counts().reindex(RATINGS, fill_value=0)
    raw = ingest_report.get("ratings", {})
    feedback = int(raw.get("notes", {}).get("rows_added_from_feedback", 0))
    return {
        "readers": int(n_readers),
        "books": int(n_books),
        "interactions": int(len(ratings)),
        "rating_distribution": {str(r): round(float(c) / max(len(ratings), 1), 6) for r, c in counts.items()},
        "feedback_interactions": feedback,
        "feedback_share": round(feedback / max(int(raw.get("rows_written", 0)), 1), 6),
    }


def drift(
    previous: dict | None,
    current: dict,
    previous_ids: tuple[set[str], set[str]] | None,
    current_ids: tuple[set[str], set[str]],
) -> dict:
    """New and dropped readers and books, the change of each profile figure, and the total-variation
    distance between the two rating distributions (0: the same, 1: disjoint)."""
    if previous_ids is None:  # the first version: nothing to compare with
        return {}
    (old_readers, old_books), (readers, books) = previous_ids, current_ids
    moved = {
        "new_readers": len(readers - old_readers),
        "dropped_readers": len(old_readers - readers),
        "new_books": len(books - old_books),
        "dropped_books": len(old_books - books),
    }
    if previous is None:  # registered before profiles were: the id sets only
        return moved
    before = previous.get("rating_distribution", {})
    after = current["rating_distribution"]
    distance = 0.5 * sum(abs(after.get(str(r), 0.0) - before.get(str(r), 0.0)) for r in RATINGS)
    return moved | {
        "interactions": [previous.get("interactions"), current["interactions"]],
        "feedback_share": [previous.get("feedback_share"), current["feedback_share"]],
        "rating_distribution_distance": round(distance, 6),
    }
