"""Online evaluation on hand-made impressions where the right answer is known; arm assignment; the
impression log's bounded queue."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pipeline.config import ExperimentParams
from pipeline.online import attribute, compare_arms, online_metrics, per_impression, wilson
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


def test_wilson_interval_and_arm_comparison():
    low, high = wilson(10, 100)
    assert low == pytest.approx(0.0552, abs=1e-3) and high == pytest.approx(0.1744, abs=1e-3)
    assert np.isnan(wilson(0, 0)[0])
    rows = [(f"p{i}", f"u{i}", "1", "production", True, T0) for i in range(200)]
    rows += [(f"c{i}", f"v{i}", "2", "challenger", True, T0) for i in range(200)]
    impressions = _impressions(rows)
    clicks = pd.DataFrame(
        {
            "request_id": [f"p{i}" for i in range(60)] + [f"c{i}" for i in range(20)],
            "position": 1,
            "positive": True,
        }
    )
    result = compare_arms(impressions, clicks)
    assert result["arms"]["production"] == {"n": 200, "rate": 0.3}
    assert result["difference"] == pytest.approx(-0.2)
    assert result["low"] < -0.2 < result["high"] < 0  # clearly worse: the interval excludes zero
    assert per_impression(impressions, clicks)["reciprocal_rank"].sum() == 80


def test_arm_assignment_is_stable_and_shares_hold():
    experiment = ExperimentParams(mode="ab", challenger_share=0.3, salt="s1")
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
