"""Standing lists (precomputed per-reader state): a list drawn from a reader's standing list is the one
full ranking gives, whatever the request's blocked books, author cap or k; readers with something new
since training never use theirs; the store keeps at most its capacity."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.ranking import ListRules
from pipeline.serving.service import BookRecommender
from pipeline.serving.standing import StandingLists
from pipeline.storage.bundle import load_bundle


@pytest.fixture(scope="module")
def pair(trained_project):
    """The same model twice: ranking every request in full, and with standing lists 12 books deep
    (shallow, so that requests run past them)."""
    folder = trained_project / "models" / "ncf"
    full = BookRecommender(load_bundle(folder))
    standing = BookRecommender(load_bundle(folder))
    standing.keep_standing_lists(depth=12, capacity=10_000)
    return full, standing


def readers(model: BookRecommender) -> list[str]:
    return model.users["user_id"].astype(str).tolist()


def test_lists_from_standing_lists_equal_full_ranking(pair):
    full, standing = pair
    for reader in readers(full):  # one reader at a time on both sides: the same arithmetic
        expected = full.rank([reader], 10)
        got = standing.rank([reader], 10)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    assert len(standing.standing) == len(readers(full))  # each reader's list was kept


def test_requests_that_run_past_a_standing_list_are_ranked_in_full(pair):
    """Blocked books from the top of the list, no author cap and a cap of 1, k beyond the depth: the
    answer is still full ranking's, never a short list."""
    full, standing = pair
    for reader in readers(full)[:60]:
        standing.rank([reader], 5)  # its standing list is kept
        top = [full.isbns[i] for i in full.rank([reader], 12)[0][0] if i >= 0][:9]
        for k, rules, blocked in (
            (10, None, {reader: top}),
            (10, ListRules(one_per_work=True, max_per_author=1), {}),
            (10, ListRules(one_per_work=True, max_per_author=None), {reader: top[:3]}),
            (30, None, {}),
        ):
            expected = full.rank([reader], k, rules=rules, blocked=blocked)
            got = standing.rank([reader], k, rules=rules, blocked=blocked)
            np.testing.assert_array_equal(got[0], expected[0])
            assert (got[0] >= 0).sum() == (expected[0] >= 0).sum()


def test_a_reader_with_new_reads_is_ranked_from_the_new_history(pair):
    full, standing = pair
    reader = readers(full)[0]
    standing.rank([reader], 10)
    liked = [full.isbns[i] for i in full.rank([readers(full)[5]], 3)[0][0]]
    expected = full.rank([reader], 10, extra_reads={reader: liked}, extra_excluded={reader: liked})
    got = standing.rank([reader], 10, extra_reads={reader: liked}, extra_excluded={reader: liked})
    np.testing.assert_array_equal(got[0], expected[0])
    assert not np.array_equal(got[0], standing.rank([reader], 10)[0])  # the new reads moved the list


def test_precomputed_standing_lists_rank_like_full_ranking(pair):
    """Precomputed in batches (another order of float sums): the same books, scores within float error."""
    full, _ = pair
    model = BookRecommender(full.bundle)
    model.keep_standing_lists(depth=30, capacity=10_000)
    assert model.precompute_standing_lists(max_readers=50) == 50
    assert len(model.standing) == 50
    users = readers(full)
    for reader in users:
        expected, got = full.rank([reader], 10), model.rank([reader], 10)
        np.testing.assert_allclose(got[1], expected[1], rtol=0, atol=1e-5)
        swapped = np.flatnonzero(got[0][0] != expected[0][0])
        # only near-ties may trade places
        assert np.all(np.abs(expected[1][0][swapped] - got[1][0][swapped]) < 1e-5), reader


def test_the_store_keeps_its_capacity_dropping_the_least_recently_used():
    store = StandingLists(depth=3, capacity=2)
    lists = np.array([[1, 2, -1], [4, 5, 6], [7, 8, 9]])
    scores = np.array([[3, 2, -np.inf], [3, 2, 1], [3, 2, 1]], dtype=np.float32)
    store.put(np.array([10, 11]), lists[:2], scores[:2])
    store.get(np.array([10]))  # 10 is now the most recently used
    store.put(np.array([12]), lists[2:], scores[2:])
    found, items, _, complete = store.get(np.array([10, 11, 12]))
    assert found.tolist() == [True, False, True] and len(store) == 2
    assert items[0].tolist() == [1, 2, -1] and complete.tolist() == [True, False, False]
