"""The catalog's works and authors, and the one ranking path, on hand-made cases where the right list
is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pipeline.data.catalog import Catalog, author_ids, work_ids
from pipeline.ranking import ListRules, Ranker, plain_top_k


def test_editions_of_one_work_ignore_case_punctuation_and_notes_in_parentheses():
    items = pd.DataFrame(
        {
            "title": [
                "The Hobbit",
                "The Hobbit (Paperback)",
                "the hobbit!",
                "THE HOBBIT: (Book 1)",
                "The Hobbit",
                "Harry Potter and the Chamber of Secrets (Book 2)",
                "Harry Potter and the Chamber of Secrets",
                None,
                None,
            ],
            "author": [
                "J.R.R. Tolkien",
                "J.R.R. Tolkien",
                "j.r.r. tolkien",
                "J. R. R. Tolkien",
                "Someone Else",
                "J. K. Rowling",
                "J.K. Rowling",
                "A",
                "A",
            ],
        }
    )
    works = work_ids(items)
    assert works[0] == works[1] == works[2] == works[3]
    assert works[4] != works[0]  # same title, another author: another book
    assert works[5] == works[6]  # "J. K." and "J.K.": punctuation is set aside in authors too
    assert works[7] != works[8]  # books without a title are never grouped
    assert len(set(works.tolist())) == 5
    editions = Catalog(works.astype(np.int64), author_ids(items).astype(np.int64)).editions()
    assert set(editions[0].indices) == {0, 1, 2, 3}
    assert set(editions[4].indices) == {4}


def test_author_ids_normalise_names_and_mark_unknown():
    authors = author_ids(
        pd.DataFrame({"author": ["Stephen King", "stephen  king", "STEPHEN KING.", None, ""]})
    )
    assert authors[0] == authors[1] == authors[2] >= 0
    assert authors[3] == -1 and authors[4] == -1


def test_with_editions_expands_known_books_to_every_edition():
    catalog = Catalog(np.array([0, 0, 1, 2, 2]), np.full(5, -1))
    known = sp.csr_matrix(np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]], dtype=np.float32))
    assert catalog.with_editions(known).toarray().tolist() == [
        [1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1],
        [0, 0, 0, 0, 0],
    ]


def test_plain_top_k_is_sorted_breaks_ties_by_item_and_pads_excluded_items():
    scores = np.array(
        [[0.1, 0.9, -np.inf, 0.5], [-np.inf, -np.inf, 1.0, -np.inf], [1, 1, 1, 1]], dtype=np.float32
    )
    ids, best = plain_top_k(scores, 3)
    assert ids.tolist() == [[1, 3, 0], [2, -1, -1], [0, 1, 2]]
    assert best[0].tolist() == pytest.approx([0.9, 0.5, 0.1])


def test_ties_across_the_kth_place_go_to_the_lowest_columns_and_match_a_full_sort():
    """Many equal scores around the k-th place (popularity counts, ItemKNN zeros): the list is the
    first k of a full sort by (score desc, column), whatever the partial sort picks."""
    row = [1, 1, 2, 2, 0, 0, 2, 2, 0, 0, 2, 1, 0, 2, 0, 1, 1, 1, 0, 0, 2, 2, 2, 1, 2, 0, 1, 2, 0, 0]
    ids, _ = plain_top_k(np.array([row], dtype=np.float32), 5)
    assert ids[0].tolist() == [2, 3, 6, 7, 10]  # numpy's argpartition took column 13 over 10 here
    rng = np.random.default_rng(0)
    for width, order in ((40, "C"), (3000, "C"), (3000, "F")):  # sorted whole; partitioned by topk
        scores = rng.integers(0, 4, size=(20, width)).astype(np.float32)
        scores[rng.random(scores.shape) < 0.2] = -np.inf
        scores[0, 7:] = -np.inf  # fewer finite scores than asked for
        ids, _ = plain_top_k(np.asarray(scores, order=order), 9)
        for line, got in zip(scores, ids, strict=True):
            expected = sorted(range(width), key=lambda c: (-line[c], c))[:9]
            assert got.tolist() == [c if np.isfinite(line[c]) else -1 for c in expected]


def hand_catalog():
    """Ten books: 0-4 by author 0 (0 and 1 editions of one work), 5-9 by five other authors."""
    work = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
    author = np.array([0, 0, 0, 0, 0, 1, 2, 3, 4, -1])
    return Catalog(work, author)


def test_author_cap_on_a_list_whose_uncapped_top_has_five_books_by_one_author():
    scores = np.array([[10, 9, 8, 7, 6, 5, 4, 3, 2, 1]], dtype=np.float32)
    uncapped = Ranker(hand_catalog(), ListRules(one_per_work=False)).top_k(scores.copy(), None, 5)[0]
    assert uncapped.tolist() == [[0, 1, 2, 3, 4]]  # five books by author 0
    capped = Ranker(hand_catalog(), ListRules(max_per_author=2)).top_k(scores.copy(), None, 5)[0]
    # one edition of work 0 (book 0, not its edition 1), then book 2; author 0 is full; then the rest
    assert capped.tolist() == [[0, 2, 5, 6, 7]]
    assert Ranker(hand_catalog(), ListRules(max_per_author=1)).top_k(scores.copy(), None, 3)[0].tolist() == [
        [0, 5, 6]
    ]


def test_rules_never_leave_a_list_short_while_eligible_books_remain():
    catalog = Catalog(np.arange(200), np.r_[np.zeros(150, dtype=np.int64), np.arange(1, 51)])
    scores = np.linspace(2, 1, 200, dtype=np.float32)[None, :].repeat(2, axis=0)
    excluded = sp.csr_matrix((np.ones(3), ([1, 1, 1], [150, 151, 152])), shape=(2, 200))
    ids, best = Ranker(catalog, ListRules(max_per_author=1)).top_k(scores, excluded, 40)
    # 149 of the first 150 are dropped by the cap: the ranker must look far past its first depth
    assert (ids >= 0).all()
    assert ids[0].tolist() == [0, *range(150, 189)]
    assert ids[1].tolist() == [0, *range(153, 192)]
    assert np.all(np.diff(best, axis=1) <= 0)
    # and when fewer eligible books remain than asked, the list is as long as it can be
    short = Ranker(catalog, ListRules(max_per_author=1)).top_k(scores[:1].copy(), None, 60)[0]
    assert (short[0] >= 0).sum() == 51


def test_unknown_authors_are_never_capped():
    catalog = Catalog(np.arange(6), np.full(6, -1))
    scores = np.arange(6, 0, -1, dtype=np.float32)[None, :]
    assert Ranker(catalog, ListRules(max_per_author=1)).top_k(scores, None, 6)[0].tolist() == [list(range(6))]


def test_rules_equal_a_greedy_walk_on_random_catalogs():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = 60
        work = rng.integers(0, 40, n)
        catalog = Catalog(work, rng.integers(-1, 8, 40)[work])  # a work has one author, as in the catalog
        scores = rng.normal(size=(5, n)).astype(np.float32)
        excluded = sp.random(5, n, density=0.2, format="csr", random_state=trial)
        excluded.data[:] = 1
        cap = int(rng.integers(1, 4))
        ids, _ = Ranker(catalog, ListRules(max_per_author=cap)).top_k(scores.copy(), excluded, 10)
        for row in range(5):
            works, authors, expected = set(), {}, []
            banned = set(excluded[row].indices)
            for item in np.lexsort((np.arange(n), -scores[row])):
                a = catalog.author[item]
                if item in banned or catalog.work[item] in works or (a >= 0 and authors.get(a, 0) >= cap):
                    continue
                works.add(catalog.work[item])
                authors[a] = authors.get(a, 0) + 1
                expected.append(int(item))
            expected = (expected + [-1] * 10)[:10]
            assert ids[row].tolist() == expected


def test_the_author_cap_tradeoff_reports_each_cap_on_the_same_lists():
    from pipeline.evaluation.evaluate import EvaluationData
    from pipeline.evaluation.selection import author_cap_tradeoff, books_per_author
    from tests.code.test_recommenders import Fixed

    scores = np.tile(np.arange(10, 0, -1, dtype=np.float32), (3, 1))
    truth = sp.csr_matrix(
        np.eye(3, 10, k=5, dtype=np.float32)
    )  # each reader's relevant book is by another author
    empty = sp.csr_matrix((3, 10), dtype=np.float32)
    content = sp.identity(10, format="csr", dtype=np.float32)
    data = EvaluationData(empty, empty, truth, None, Ranker(hand_catalog(), ListRules(one_per_work=False)))
    data.item_content = content  # every book unlike every other (no catalog text to build it from)
    rows = author_cap_tradeoff(Fixed(scores), data, np.arange(3), caps=(None, 2, 1), k=5)
    assert [r["max_per_author"] for r in rows] == [None, 2, 1]
    assert [r["books_per_author"] for r in rows] == [5.0, pytest.approx(5 / 4), 1.0]
    assert rows[0]["ndcg@10"] < rows[2]["ndcg@10"]  # capping lets the other authors' books in
    assert (
        books_per_author(np.array([[0, 2, 9, -1]]), hand_catalog().author) == 2.0
    )  # unknown authors left out


def test_a_version_registered_before_request_rules_still_honours_blocked_books():
    """Its rank has no `blocked`: the wrapper ranks deeper and drops them, lists keep their length."""
    import numpy as np

    from pipeline.serving.compat import BlockedAfterRanking, with_request_rules

    class Old:
        def item_indices(self, isbns, strict=True):
            return np.array([int(i) for i in isbns], dtype=np.int64)

        def rank(
            self,
            user_ids,
            k=10,
            exclude="all",
            readers=None,
            extra_reads=None,
            extra_excluded=None,
            rules=None,
        ):
            ids = np.tile(np.arange(k, dtype=np.int64), (len(user_ids), 1))
            return ids, -ids.astype(np.float32)

    wrapped = with_request_rules(Old())
    assert isinstance(wrapped, BlockedAfterRanking)
    ids, scores = wrapped.rank(["a", "b"], 4, blocked={"a": ("0", "2"), "b": ()})
    assert ids.tolist() == [[1, 3, 4, 5], [0, 1, 2, 3]] and scores[0].tolist() == [-1, -3, -4, -5]
    from pipeline.serving.service import BookRecommender

    assert "blocked" in __import__("inspect").signature(BookRecommender.rank).parameters  # today's code
