"""Two-stage retrieval: the second stage scores exactly what full ranking scores, lists equal full
ranking when the candidates cover the catalog, and with fewer candidates they keep the exclusions and
the list rules and stay close to full ranking."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from pipeline.data.catalog import Catalog
from pipeline.model.ncf import NCF, NCFConfig
from pipeline.model.neighbourhood import Neighbourhood
from pipeline.model.recommender import NCFRecommender
from pipeline.model.retrieval import CandidateIndex, RetrievalSettings
from pipeline.ranking import ListRules, Ranker

N_USERS, N_ITEMS = 60, 400


@pytest.fixture(scope="module")
def world():
    """A random NCF whose MLP and bias matter (not a plain dot product), random reads, an ItemKNN term."""
    torch.manual_seed(0)
    config = NCFConfig(
        N_USERS, N_ITEMS, {"country": 3}, {"author": 5}, gmf_dim=16, mlp_dim=8, mlp_layers=(8, 4)
    )
    model = NCF(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.5)
    rng = np.random.default_rng(0)
    reads = sp.random(N_USERS, N_ITEMS, density=0.03, random_state=1, format="csr", dtype=np.float32)
    reads.data[:] = 1
    similarity = sp.random(N_ITEMS, N_ITEMS, density=0.02, random_state=2, format="csr", dtype=np.float32)
    user_features = torch.as_tensor(rng.integers(0, 3, (N_USERS + 1, 1)))
    item_features = torch.as_tensor(rng.integers(0, 5, (N_ITEMS + 1, 1)))
    return model, user_features, item_features, reads, Neighbourhood(similarity, 0.7)


def recommender(world, two_stage: bool | None, **settings) -> NCFRecommender:
    model, user_features, item_features, reads, neighbourhood = world
    retrieval = RetrievalSettings(**{"candidates": 50, "min_catalog": 0, **settings})
    return NCFRecommender(
        model, user_features, item_features, reads, None, neighbourhood, retrieval, two_stage
    )


def test_candidate_scores_equal_full_catalog_scores_at_those_items(world):
    model = world[0]
    full = recommender(world, two_stage=False)
    index = CandidateIndex(full.item_cache(), RetrievalSettings(candidates=10))
    users = torch.tensor([0, 7, N_USERS])  # N_USERS: the unknown reader
    features = world[1][users]
    with torch.no_grad():
        vectors = model.user_vectors(users, features, model.history_terms(world[3][[0, 7, 0]]))
    items = np.array([[3, 17, 250, 399], [0, 1, 2, 3], [5, 6, 7, 8]])
    every = model.score_all_items(vectors, full.item_cache()).numpy()
    some = model.score_candidates(vectors, index.rows(items)).numpy()
    np.testing.assert_allclose(some, np.take_along_axis(every, items, axis=1), rtol=1e-5, atol=1e-5)


def test_lists_equal_full_ranking_when_the_candidates_cover_the_catalog(world):
    """Forced on, with the index asked for every book and the blend's moments from every book, the
    lists are exactly full ranking's, list rules and exclusions included."""
    catalog = Catalog(work=np.arange(N_ITEMS) // 2, author=(np.arange(N_ITEMS) // 2) % 7)
    ranker = Ranker(catalog, ListRules(one_per_work=True, max_per_author=2))
    users = np.arange(N_USERS)
    full_ids, full_scores = recommender(world, two_stage=False).recommend(users, k=10, ranker=ranker)
    covering = recommender(world, two_stage=True, candidates=N_ITEMS - 1, sample=N_ITEMS)
    assert covering.two_stage
    ids, scores = covering.recommend(users, k=10, ranker=ranker)
    np.testing.assert_array_equal(ids, full_ids)
    np.testing.assert_allclose(scores, full_scores, rtol=1e-4, atol=1e-4)


def test_fewer_candidates_keep_exclusions_and_rules_and_stay_close_to_full_ranking(world):
    reads = world[3]
    catalog = Catalog(work=np.arange(N_ITEMS) // 2, author=(np.arange(N_ITEMS) // 2) % 7)
    ranker = Ranker(catalog, ListRules(one_per_work=True, max_per_author=2))
    users = np.arange(N_USERS)
    full_ids, _ = recommender(world, two_stage=False).recommend(users, k=10, ranker=ranker)
    two_stage = recommender(world, two_stage=True, candidates=60)
    ids, _ = two_stage.recommend(users, k=10, ranker=ranker)
    assert (ids >= 0).all()
    for user, row in zip(users, ids, strict=True):
        assert not set(row) & set(reads[user].indices)  # never a book the reader read
        assert len(set(catalog.work[row])) == 10  # one edition per work
        assert np.bincount(catalog.author[row]).max() <= 2  # the author cap
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, full_ids, strict=True)])
    assert overlap > 0.8


def test_the_index_finds_the_books_of_highest_gmf_score_plus_bias(world):
    """Stage one alone (no neighbours): the index's candidates are nearly the exact top by GMF + bias."""
    model = world[0]
    full = recommender(world, two_stage=False)
    cache = full.item_cache()
    index = CandidateIndex(cache, RetrievalSettings(candidates=40))
    users = torch.arange(N_USERS)
    with torch.no_grad():
        vectors = model.user_vectors(users, world[1][users], model.history_terms(world[3]))
    exact = torch.topk(vectors.gmf @ cache.gmf_weighted + cache.bias, 40).indices.numpy()
    found = index.candidates(vectors.gmf, None, extra=0)
    recall = np.mean([len(set(a) & set(b)) / 40 for a, b in zip(found, exact, strict=True)])
    assert recall > 0.95


def test_small_catalogs_rank_in_full_unless_two_stage_is_forced(world):
    assert not recommender(world, None, min_catalog=N_ITEMS + 1).two_stage
    assert recommender(world, None, min_catalog=N_ITEMS).two_stage
    assert recommender(world, True, min_catalog=N_ITEMS + 1).two_stage
    assert not recommender(world, True, candidates=0).two_stage  # 0: always full
    assert not recommender(world, True, candidates=N_ITEMS).two_stage  # covers the catalog: full


def test_the_serving_core_ranks_through_two_stage_retrieval_when_the_bundle_says_so(trained_project):
    """The API, the pyfunc and the dashboard share `BookRecommender.rank`: with the bundle's retrieval
    settings in force, lists come from the candidates, exclude what the reader read (every edition),
    and match full ranking's when the candidates cover the catalog."""
    from pipeline.serving.service import BookRecommender
    from pipeline.storage.bundle import load_bundle

    folder = trained_project / "models" / "ncf"
    full = BookRecommender(load_bundle(folder))
    n_items = full.bundle.n_items
    settings = {"candidates": 20, "min_catalog": 0, "neighbours": 0, "sample": 4096}
    few, covering = load_bundle(folder), load_bundle(folder)
    few.metadata["retrieval"] = settings
    covering.metadata["retrieval"] = settings | {"candidates": n_items - 1}
    few, covering = BookRecommender(few), BookRecommender(covering)
    assert few.engines["all"].two_stage and not full.engines["all"].two_stage
    readers = full.example_users(n=6, min_reads=3, max_reads=1000)
    expected = full.recommend(readers, k=5)
    served = covering.recommend(readers, k=5)
    assert (served["isbn"].to_numpy() == expected["isbn"].to_numpy()).all()
    got = few.recommend(readers, k=5)
    for reader in readers:
        listed = few.item_indices(got.loc[got["user_id"] == reader, "isbn"])
        known = few.bundle.exclusion()[few.user_index[reader]].indices
        assert len(listed) == 5 and not set(listed) & set(known)
