"""Books added between trainings, on a hand-made catalog whose right answers are known
(tests/model/handmade.py): a new edition takes its work's vectors and is never listed beside another
edition; a new book by a known author reaches that author's readers; ratings move a new book's vectors
and give it co-read neighbours; every list rule, standing lists and two-stage retrieval apply to it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.ranking import ListRules
from pipeline.serving.catalog_growth import Arrivals, grow
from pipeline.serving.service import BookRecommender
from tests.model.handmade import handmade_bundle, handmade_recommender, new_books

NEW_AUSTEN = ("9780141439587", "Northanger Abbey", "Jane Austen", 1995, "Penguin")
EMMA_AGAIN = ("9780141439600", "Emma (Penguin Classics)", "Jane Austen", 1996, "Penguin")
UNKNOWN_AUTHOR = ("9780000000029", "A Book Nobody Knows", "Nobody Known", 1991, "Small Press")
NO_RATINGS = pd.DataFrame(columns=["user_id", "isbn", "rating"])
AUSTEN_READER, JOYCE_READERS = "101", ["106", "107", "108"]


@pytest.fixture(scope="module")
def base() -> BookRecommender:
    return handmade_recommender()


def grown(base, *books, ratings=NO_RATINGS) -> BookRecommender:
    return grow(base, Arrivals(new_books(*books), ratings))


def vectors(model: BookRecommender, isbn: str) -> np.ndarray:
    index = int(model.item_indices([isbn])[0])
    return model.engines["all"].item_vectors()[index]


def ratings(isbn: str, readers: list[str], rating: int = 9) -> pd.DataFrame:
    return pd.DataFrame({"user_id": readers, "isbn": isbn, "rating": rating})


def test_nothing_to_add_is_the_version_itself(base):
    assert grow(base, Arrivals(new_books(), NO_RATINGS)) is base
    emma = base.items.iloc[0]
    known = (emma.isbn, emma.title, emma.author, int(emma.year), emma.publisher)
    assert grown(base, known) is base  # a book the version knows stays the trained one


def test_a_new_edition_inherits_its_works_vectors_and_is_never_listed_beside_another_edition(base):
    model = grown(base, EMMA_AGAIN, NEW_AUSTEN)
    emma = str(base.items.iloc[0].isbn)
    np.testing.assert_allclose(vectors(model, EMMA_AGAIN[0]), vectors(model, emma), atol=1e-6)
    new, old = model.item_indices([EMMA_AGAIN[0], emma])
    assert model.catalog.work[new] == model.catalog.work[old]
    similarity = model.bundle.neighbourhood.similarity.toarray()  # and its neighbourhood row and column
    np.testing.assert_array_equal(similarity[new], similarity[old])
    np.testing.assert_array_equal(similarity[:, new], similarity[:, old])
    scores = model.engines["all"].score_users(np.arange(len(model.users)))
    np.testing.assert_allclose(scores[:, new], scores[:, old], rtol=1e-5, atol=1e-6)
    for reader in model.users["user_id"]:
        listed = set(model.recommend([reader], 12)["isbn"])
        assert not {EMMA_AGAIN[0], emma} <= listed
    similar = model.similar_books([emma], 12)["similar_isbn"]
    assert EMMA_AGAIN[0] not in set(similar)  # never the query's other edition
    as_query = model.similar_books([EMMA_AGAIN[0]], 12)["similar_isbn"]
    assert emma not in set(as_query) and len(as_query) > 0


def test_a_new_book_by_a_known_author_ranks_above_a_random_book_for_that_authors_reader(base):
    model = grown(base, NEW_AUSTEN, UNKNOWN_AUTHOR)
    ids, scores = model.rank([AUSTEN_READER], 14)
    listed = [model.isbns[i] for i in ids[0] if i >= 0]
    assert NEW_AUSTEN[0] in listed and UNKNOWN_AUTHOR[0] in listed
    assert listed.index(NEW_AUSTEN[0]) < listed.index(UNKNOWN_AUTHOR[0])
    joyce = base.items[base.items["author"] == "James Joyce"]["isbn"]
    assert all(listed.index(NEW_AUSTEN[0]) < listed.index(isbn) for isbn in joyce if isbn in listed)
    assert model.search("northanger")["isbn"].tolist() == [NEW_AUSTEN[0]]
    assert model.similar_books([NEW_AUSTEN[0]], 1)["similar_isbn"].iloc[0] in set(
        base.items[base.items["author"] == "Jane Austen"]["isbn"]
    )


def test_ratings_move_a_new_books_vectors_towards_its_readers(base):
    before = grown(base, UNKNOWN_AUTHOR)
    after = grown(base, UNKNOWN_AUTHOR, ratings=ratings(UNKNOWN_AUTHOR[0], JOYCE_READERS))
    assert not np.allclose(vectors(before, UNKNOWN_AUTHOR[0]), vectors(after, UNKNOWN_AUTHOR[0]))
    other_joyce_reader = "110"

    def rank_of(model) -> int:
        listed = [model.isbns[i] for i in model.rank([other_joyce_reader], 14)[0][0] if i >= 0]
        return listed.index(UNKNOWN_AUTHOR[0])

    assert rank_of(after) < rank_of(before)
    # a dislike is not a reader of the book: nothing moves
    disliked = grown(base, UNKNOWN_AUTHOR, ratings=ratings(UNKNOWN_AUTHOR[0], JOYCE_READERS, rating=2))
    np.testing.assert_allclose(vectors(disliked, UNKNOWN_AUTHOR[0]), vectors(before, UNKNOWN_AUTHOR[0]))


def test_ratings_give_a_new_book_its_co_read_neighbours(base):
    before = grown(base, UNKNOWN_AUTHOR)
    after = grown(base, UNKNOWN_AUTHOR, ratings=ratings(UNKNOWN_AUTHOR[0], JOYCE_READERS))
    new = int(after.item_indices([UNKNOWN_AUTHOR[0]])[0])
    similarity = after.bundle.neighbourhood.similarity
    assert before.bundle.neighbourhood.similarity[new].nnz == 0
    neighbours = set(similarity[new].indices) - {new}
    joyce = set(np.flatnonzero(base.items["author"].to_numpy() == "James Joyce"))
    assert neighbours and neighbours <= joyce
    assert similarity[:, new].nnz > 1  # and it is a neighbour of the books its readers read
    trained = base.bundle.neighbourhood.similarity
    np.testing.assert_array_equal(
        similarity[: base.bundle.n_items, : base.bundle.n_items].toarray(), trained.toarray()
    )


def test_every_list_rule_applies_to_new_books(base):
    model = grown(base, NEW_AUSTEN, EMMA_AGAIN)
    capped = model.recommend([AUSTEN_READER], 10, rules=ListRules(one_per_work=True, max_per_author=1))
    authors = model.books(model.item_indices(capped["isbn"]))["author"]
    assert authors.value_counts().max() == 1
    top = model.recommend([AUSTEN_READER], 10)["isbn"].tolist()
    assert NEW_AUSTEN[0] in top
    blocked = model.recommend([AUSTEN_READER], 10, blocked={AUSTEN_READER: [NEW_AUSTEN[0]]})["isbn"]
    assert NEW_AUSTEN[0] not in set(blocked)
    read = model.recommend([AUSTEN_READER], 10, extra_reads={AUSTEN_READER: [NEW_AUSTEN[0]]})["isbn"]
    assert NEW_AUSTEN[0] not in set(read)  # a reader who read it is never offered it
    excluded = model.recommend([AUSTEN_READER], 10, extra_excluded={AUSTEN_READER: [EMMA_AGAIN[0]]})
    assert not {EMMA_AGAIN[0], str(base.items.iloc[0].isbn)} & set(excluded["isbn"])  # nor its other edition


def test_standing_lists_and_two_stage_retrieval_include_new_books(base):
    full = grown(base, NEW_AUSTEN, UNKNOWN_AUTHOR)
    standing_base = BookRecommender(base.bundle)
    standing_base.keep_standing_lists(depth=6, capacity=100)
    standing = grown(standing_base, NEW_AUSTEN, UNKNOWN_AUTHOR)
    assert standing.standing is not None
    for reader in full.users["user_id"]:
        expected = full.rank([reader], 5)
        np.testing.assert_array_equal(standing.rank([reader], 5)[0], expected[0])
        np.testing.assert_array_equal(standing.rank([reader], 5)[0], expected[0])  # from its standing list
    retrieval = {"candidates": 6, "min_catalog": 0, "neighbours": 0, "sample": 64}
    bundle = handmade_bundle()
    bundle.metadata["retrieval"] = retrieval
    two_stage = grown(BookRecommender(bundle), NEW_AUSTEN, UNKNOWN_AUTHOR)
    assert two_stage.engines["all"].two_stage
    listed = two_stage.recommend([AUSTEN_READER], 3)["isbn"].tolist()
    assert NEW_AUSTEN[0] in listed


def test_a_book_nobody_rated_has_its_side_feature_vectors_and_the_mean_bias(base):
    model = grown(base, UNKNOWN_AUTHOR, NEW_AUSTEN)
    net, trained = model.bundle.model, base.bundle.model
    new = torch.as_tensor(model.item_indices([UNKNOWN_AUTHOR[0], NEW_AUSTEN[0]]))
    assert torch.count_nonzero(net.item_gmf.ids.weight[new]) == 0
    assert torch.count_nonzero(net.item_mlp.ids.weight[new]) == 0
    mean_bias = trained.item_bias.weight[: trained.config.n_items].mean()
    torch.testing.assert_close(net.item_bias.weight[new, 0], mean_bias.expand(2))
    features = model.bundle.item_feature_tensor()[new]
    expected = sum(table(features[:, i]) for i, table in enumerate(trained.item_gmf.features.values()))
    torch.testing.assert_close(net.item_vectors(new, model.bundle.item_feature_tensor()[new]).gmf, expected)
