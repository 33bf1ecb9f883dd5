"""Online evaluation on hand-made impressions where the right answer is known; arm assignment; the
impression log's bounded queue."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pipeline.config import ExperimentParams
from pipeline.online import (
    ExperimentPlan,
    attribute,
    experiment_lists,
    experiment_result,
    online_metrics,
    per_impression,
)
from pipeline.serving.experiment import arm_of
from pipeline.storage.impressions import Impression, ImpressionLog

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(hours=24)


def _impressions(rows):
    return pd.DataFrame(
        rows, columns=["request_id", "user_id", "model_version", "arm", "shown", "created_at"]
    ).assign(created_at=lambda f: pd.to_datetime(f["created_at"], utc=True))


def _books(lists):
    return pd.DataFrame(
        [(rid, pos, isbn) for rid, isbns in lists.items() for pos, isbn in enumerate(isbns, start=1)],
        columns=["request_id", "position", "isbn"],
    )


def _feedback(rows):
    return pd.DataFrame(rows, columns=["user_id", "isbn", "rating", "created_at", "request_id"]).assign(
        created_at=lambda f: pd.to_datetime(f["created_at"], utc=True)
    )


@pytest.fixture
def served():
    impressions = _impressions(
        [
            ("r1", "u1", "1", "production", True, T0),
            ("r2", "u1", "1", "production", True, T0 + timedelta(hours=1)),
            ("r3", "u2", "2", "challenger", True, T0),
            ("r4", "u2", "2", "challenger", False, T0),  # a shadow list: nobody saw it
            ("r5", "u3", "1", "production", True, T0),
        ]
    )
    books = _books(
        {
            "r1": ["a", "b", "c"],
            "r2": ["b", "d", "e"],
            "r3": ["x", "y", "z"],
            "r4": ["q", "y"],
            "r5": ["a", "b"],
        }
    )
    return impressions, books


def test_attribution_by_request_id_then_by_the_latest_list_in_the_window(served):
    impressions, books = served
    feedback = _feedback(
        [
            ("u1", "b", 0, T0 + timedelta(hours=2), "r1"),  # named: r1 although r2 is later and has b
            ("u1", "d", 9, T0 + timedelta(hours=3), None),  # windowed: only r2 showed d
            ("u1", "b", 8, T0 + timedelta(hours=4), None),  # windowed: the latest list with b is r2
            ("u2", "q", 0, T0 + timedelta(hours=1), None),  # only in the shadow list: not attributed
            ("u2", "z", 2, T0 + timedelta(hours=1), "r3"),  # a dislike still counts as a click
            ("u3", "a", 0, T0 + timedelta(hours=30), None),  # outside the window
            ("u3", "zz", 0, T0 + timedelta(hours=1), "r5"),  # names r5 but zz was not in it
        ]
    )
    clicks = attribute(impressions, books, feedback, WINDOW, min_explicit_rating=5)
    got = set(map(tuple, clicks[["request_id", "position", "isbn", "positive"]].to_numpy()))
    assert got == {("r1", 2, "b", True), ("r2", 2, "d", True), ("r2", 1, "b", True), ("r3", 3, "z", False)}


def test_online_metrics_per_version_and_arm(served):
    impressions, books = served
    feedback = _feedback(
        [("u1", "b", 0, T0 + timedelta(hours=2), "r1"), ("u2", "z", 2, T0 + timedelta(hours=1), "r3")]
    )
    clicks = attribute(impressions, books, feedback, WINDOW, min_explicit_rating=5)
    table = online_metrics(
        impressions.assign(surface="recommendations"),
        books,
        clicks,
        catalog_size=20,
        head_isbns={"a", "b"},
        by=("model_version", "arm"),
    ).set_index(["model_version", "arm"])
    production = table.loc[("1", "production")]
    assert production["shown"] == 3 and production["ctr"] == pytest.approx(1 / 3)
    assert production["positive_rate"] == pytest.approx(1 / 3)
    assert production["mrr"] == pytest.approx((1 / 2) / 3)  # r1 clicked at position 2, r2 and r5 none
    assert production["coverage"] == pytest.approx(5 / 20)  # a b c d e
    assert production["long_tail_share"] == pytest.approx(3 / 8)  # 8 slots, a and b fill 5 of them
    assert production["ctr_low"] < production["ctr"] < production["ctr_high"]
    challenger = table.loc[("2", "challenger")]
    assert challenger["impressions"] == 2 and challenger["shown"] == 1
    assert challenger["ctr"] == 1.0 and challenger["positive_rate"] == 0.0
    assert challenger["coverage"] == pytest.approx(4 / 20)  # x y z q: the shadow list was served too


def test_an_experiments_evidence_is_its_own_recommendation_lists_only():
    """Similar-book and new-reader lists (logged under placeholder readers, never clickable), lists
    of other versions and lists from before the experiment are not evidence of its arms."""
    plan = ExperimentPlan("exp-2", T0, "s", 0.5, "1", "2", 2, 2, 0.3, 0.46)
    rows = [
        ("p1", "u1", "1", "production", True, T0 + timedelta(minutes=1), "recommendations"),
        ("p2", "u2", "1", "production", True, T0 + timedelta(minutes=1), "recommendations"),
        ("c1", "u3", "2", "challenger", True, T0 + timedelta(minutes=1), "recommendations"),
        ("c2", "u4", "2", "challenger", True, T0 + timedelta(minutes=1), "recommendations"),
        ("s1", "<similar>", "1", "production", True, T0 + timedelta(minutes=1), "similar"),
        ("n1", "<new reader>", "1", "production", True, T0 + timedelta(minutes=1), "new_reader"),
        (
            "o1",
            "u5",
            "3",
            "challenger",
            True,
            T0 + timedelta(minutes=1),
            "recommendations",
        ),  # another version
        (
            "e1",
            "u6",
            "1",
            "production",
            True,
            T0 - timedelta(minutes=1),
            "recommendations",
        ),  # before the start
        ("h1", "u7", "2", "challenger", False, T0 + timedelta(minutes=1), "recommendations"),  # shadow
    ]
    impressions = pd.DataFrame(
        rows, columns=["request_id", "user_id", "model_version", "arm", "shown", "created_at", "surface"]
    )
    assert sorted(experiment_lists(impressions, plan)["request_id"]) == ["c1", "c2", "p1", "p2"]
    clicks = pd.DataFrame({"request_id": ["p1", "c1", "c2", "e1"], "position": 1, "positive": True})
    result = experiment_result(impressions, clicks, plan)
    assert (result.production_rate, result.challenger_rate) == (0.5, 1.0)  # not 1/4 with s1, n1, e1
    assert (result.production_readers, result.challenger_readers) == (2, 2) and result.reached


def test_readers_not_lists_are_the_unit_of_every_interval():
    """Two arms with the same 30% click-through over 200 lists: one from 200 readers, one from 4
    heavy readers of 50 lists each. The heavy readers' interval is far wider (4 units, not 200)."""
    many = [(f"m{i}", f"u{i}", "1", "production", True, T0) for i in range(200)]
    few = [(f"f{i}", f"h{i % 4}", "2", "production", True, T0) for i in range(200)]
    impressions = _impressions(many + few)
    clicked = [f"m{i}" for i in range(60)] + [f"f{i}" for i in range(200) if i % 4 == 0][:50]
    clicked += [f"f{i}" for i in range(200) if i % 4 == 1][:10]
    clicks = pd.DataFrame({"request_id": clicked, "position": 1, "positive": True})
    table = online_metrics(
        impressions.assign(surface="recommendations"), _books({}), clicks, 10, set(), by=("model_version",)
    ).set_index("model_version")
    assert table.loc["1", "ctr"] == table.loc["2", "ctr"] == pytest.approx(0.3)
    assert (table.loc["1", "readers"], table.loc["2", "readers"]) == (200, 4)
    width = table["ctr_high"] - table["ctr_low"]
    assert width["2"] > 3 * width["1"]
    assert per_impression(impressions, clicks)["reciprocal_rank"].sum() == 120


def test_arm_assignment_is_stable_and_shares_hold():
    experiment = ExperimentParams(mode="ab", challenger_share=0.3, salt="s1", mde=0.1, power=0.95)
    readers = [str(i) for i in range(10_000)]
    arms = [arm_of(r, experiment) for r in readers]
    assert arms == [arm_of(r, experiment) for r in reversed(readers)][::-1]  # order does not matter
    assert abs(arms.count("challenger") / len(arms) - 0.3) < 0.015
    reshuffled = [arm_of(r, experiment.model_copy(update={"salt": "s2"})) for r in readers]
    assert 0.3 < np.mean([a != b for a, b in zip(arms, reshuffled, strict=True)]) < 0.5
    off = experiment.model_copy(update={"mode": "off"})
    shadow = experiment.model_copy(update={"mode": "shadow"})
    assert {arm_of(r, off) for r in readers} == {arm_of(r, shadow) for r in readers} == {"production"}


def test_a_full_impression_queue_drops_and_counts_and_never_blocks():
    release, written = threading.Event(), []

    def slow_write(batch):
        release.wait(10)
        written.extend(batch)

    drops = []
    log = ImpressionLog(slow_write, capacity=5, batch_size=2, on_drop=lambda: drops.append(1))
    impressions = [
        Impression(f"r{i}", "u", "1", "production", True, "recommendations", ("a",)) for i in range(40)
    ]
    accepted = [log.log(i) for i in impressions]  # the writer is stuck: the queue fills up
    assert log.dropped == len(drops) == accepted.count(False) > 0
    release.set()
    log.close()
    assert log.logged == accepted.count(True) == len(written)  # everything accepted was written
    assert {i.request_id for i in written} == {
        i.request_id for i, ok in zip(impressions, accepted, strict=True) if ok
    }
