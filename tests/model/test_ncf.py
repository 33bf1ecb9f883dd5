"""Model behaviour on inputs where the right answer is known: planted tastes, side features, cold start,
the serving path against the training forward, BPR by hand, the sampler, determinism."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from pipeline.config import load_params
from pipeline.model.losses import bpr_loss, item_l2
from pipeline.model.ncf import NCF, ItemVectors, NCFConfig
from pipeline.model.recommender import NCFRecommender
from pipeline.model.rows import TrainingRows
from pipeline.model.sampling import NegativeSampler
from pipeline.model.train import TrainingData, _hardest, build_model, fit
from tests.conftest import REPO_ROOT

N_GROUPS, USERS_PER_GROUP, ITEMS_PER_GROUP = 4, 30, 12


def planted(seed: int = 0, reads: int = 6):
    """Users of group g read only books of shelf g; a user's country (feature 'country') is g."""
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for user in range(N_GROUPS * USERS_PER_GROUP):
        group = user // USERS_PER_GROUP
        books = rng.choice(ITEMS_PER_GROUP, size=reads, replace=False) + group * ITEMS_PER_GROUP
        rows += [user] * reads
        cols += books.tolist()
    n_users, n_items = N_GROUPS * USERS_PER_GROUP, N_GROUPS * ITEMS_PER_GROUP
    train = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_users, n_items))
    user_features = torch.zeros((n_users + 1, 3), dtype=torch.long)
    user_features[:n_users, 1] = torch.arange(n_users) // USERS_PER_GROUP + 1  # country id; 0 = unknown
    item_features = torch.zeros((n_items + 1, 3), dtype=torch.long)
    item_features[:n_items, 0] = torch.arange(n_items) // ITEMS_PER_GROUP + 1  # author id per shelf
    return TrainingData(
        train,
        user_features,
        item_features,
        {"age_bucket": 3, "country": N_GROUPS + 1, "region": 2},
        {"author": N_GROUPS + 1, "publisher": 2, "decade": 2},
    )


def small_params(**overrides):
    base = load_params(REPO_ROOT).train.model_copy(
        update={
            "gmf_dim": 16,
            "mlp_dim": 8,
            "mlp_layers": (16,),
            "dropout": 0.0,
            "lr": 0.02,
            "embedding_lr": 0.02,
            "lr_decay": 1.0,  # the planted tastes are calibrated for a constant rate
            "batch_size": 256,
            "epochs": 30,
            "negatives": 4,
            "l2": 1e-5,
            "patience": 30,
            "max_seconds": 0,
            "threads": 1,
            "early_stopping_users": 0,
        }
    )
    return base.model_copy(update=overrides)


@pytest.fixture(scope="module")
def trained():
    data = planted()
    model = build_model(data, small_params())
    history = fit(model, data, small_params(), validate=None, show_progress=False)
    return data, model, history


def test_planted_tastes_are_learned_in_seconds(trained):
    data, model, history = trained
    assert history.epochs[-1]["loss"] < 0.5 * history.epochs[0]["loss"]
    recommender = NCFRecommender(model, data.user_features, data.item_features, data.train)
    users = np.arange(data.n_users)
    top, _ = recommender.recommend(users, k=ITEMS_PER_GROUP - 6)  # the unread rest of the own shelf
    own_shelf = (top // ITEMS_PER_GROUP) == (users[:, None] // USERS_PER_GROUP)
    assert own_shelf.mean() > 0.95


def test_serving_path_equals_training_forward(trained):
    data, model, _ = trained
    users = torch.tensor([0, 31, 95])
    recommender = NCFRecommender(model, data.user_features, data.item_features, data.train)
    full = recommender.score_users(users.numpy())  # precomputed item cache, chunked MLP
    rows = data.train[users.numpy()]
    terms = model.history_terms(rows)
    user = model.user_vectors(users, data.user_features[users], terms)
    items = torch.arange(data.n_items).expand(len(users), -1)
    with torch.no_grad():
        pairwise = model.score(user, model.item_vectors(items, data.item_features[items]))
    assert full.shape == (3, data.n_items)
    np.testing.assert_allclose(full, pairwise.numpy(), rtol=1e-4, atol=1e-5)


def test_side_features_change_a_users_ranking(trained):
    data, model, _ = trained
    recommender = NCFRecommender(model, data.user_features, data.item_features, data.train)
    before = recommender.score_users(np.array([0]))[0]
    moved = data.user_features.clone()
    moved[0, 1] = 3  # same user, other country
    after = NCFRecommender(model, moved, data.item_features, data.train).score_users(np.array([0]))[0]
    change = after - before
    # not a constant shift (which BPR could not even learn): different books move differently
    assert np.std(change) > 1e-3
    assert not np.array_equal(np.argsort(-before)[:10], np.argsort(-after)[:10])


def test_cold_start_from_location_alone_and_with_liked_books(trained):
    data, model, _ = trained
    unknown = torch.tensor([data.n_users, data.n_users])
    features = torch.zeros((2, 3), dtype=torch.long)
    features[:, 1] = torch.tensor([1, 3])  # country of group 0 and of group 2
    empty = sp.csr_matrix((2, data.n_items), dtype=np.float32)
    terms = model.history_terms(empty)
    recommender = NCFRecommender(model, data.user_features, data.item_features, data.train)
    with torch.no_grad():
        scores = model.score_all_items(
            model.user_vectors(unknown, features, terms), recommender.item_cache()
        ).numpy()
    assert np.argmax(scores[0]) // ITEMS_PER_GROUP == 0
    assert np.argmax(scores[1]) // ITEMS_PER_GROUP == 2
    liked = sp.csr_matrix((np.ones(3), ([0, 0, 0], [37, 38, 39])), shape=(1, data.n_items))  # shelf 3
    terms = model.history_terms(liked.tocsr())
    with torch.no_grad():
        folded = model.score_all_items(
            model.user_vectors(unknown[:1], torch.zeros((1, 3), dtype=torch.long), terms),
            recommender.item_cache(),
        ).numpy()[0]
    folded[[37, 38, 39]] = -np.inf
    assert np.argmax(folded) // ITEMS_PER_GROUP == 3


def test_bpr_loss_by_hand():
    loss = bpr_loss(torch.tensor([2.0]), torch.tensor([[1.0, 3.0]]))
    expected = (-math.log(1 / (1 + math.exp(-1))) - math.log(1 / (1 + math.exp(1)))) / 2
    assert float(loss) == pytest.approx(expected)  # 0.81326
    assert float(loss) == pytest.approx(0.8132616875)
    huge = bpr_loss(torch.tensor([0.0]), torch.tensor([[1000.0]]))
    assert math.isfinite(float(huge)) and float(huge) == pytest.approx(1000.0)
    # positives 0 and 3 (squared norms 5 and 1, mean 3); negatives 1, 2, 4, 5 (1, 4, 0, 9, mean 3.5);
    # the MLP tower's vectors add their own squared norms (item 5 drawn twice: 2 * 1 / 4)
    gmf = torch.tensor([[1.0, 2.0], [1.0, 0.0], [0.0, 2.0], [0.0, 1.0], [0.0, 0.0], [3.0, 0.0]])
    mlp = torch.zeros((6, 1))
    table = ItemVectors(gmf, mlp, torch.zeros(6))
    positive, negative = torch.tensor([0, 3]), torch.tensor([[1, 2], [4, 5]])
    assert float(item_l2(table, positive, negative)) == pytest.approx(3.0 + 3.5)
    mlp[5] = 1.0
    assert float(item_l2(table, positive, torch.tensor([[1, 5], [5, 5]]))) == pytest.approx(
        3.0 + (1 + 9 + 9 + 9) / 4 + 3 / 4
    )


def test_batch_history_terms_leave_the_positive_out_of_its_readers_full_history():
    """The training history term, computed for a batch's readers only, is each reader's whole
    history minus the positive, over |H| - 1 ** alpha: the same as `history_terms` on that row."""
    data = planted()
    model = build_model(data, small_params())
    users = torch.tensor([5, 40, 5, 119])  # a reader twice, with two positives
    positives = torch.tensor(
        [int(data.train[int(u)].indices[i]) for u, i in zip(users, [0, 2, 3, 5], strict=True)]
    )
    terms = model.training_history_terms(TrainingRows.of_matrix(data.train), users, positives)
    for row, (user, positive) in enumerate(zip(users.tolist(), positives.tolist(), strict=True)):
        left_out = data.train[user].tolil()
        left_out[0, positive] = 0
        expected = model.history_terms(left_out.tocsr())
        # history_terms divides by the |H'| of the row it is given, training by |H| - 1: the same here
        torch.testing.assert_close(terms.gmf[row], expected.gmf[0])
        torch.testing.assert_close(terms.mlp[row], expected.mlp[0])


def test_a_sampled_history_is_a_window_of_the_row_and_unbiased_for_the_whole():
    """`train.history_sample`: a history longer than the sample is summed over `most` of its books (a
    cyclic window from a random start), weighted length / most so that its mean is the whole sum;
    shorter histories, and `most` 0, are summed whole."""
    data = planted(reads=6)
    rows = TrainingRows.of_matrix(data.train)
    users = torch.tensor([3, 50, 77])
    whole, whole_offsets, weights = rows.of(users)
    assert torch.equal(weights, torch.ones(3)) and len(whole) == 18
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(data.n_items)
    draws = 3000
    for _ in range(draws):
        items, offsets, weights = rows.of(users, 4, generator)
        assert torch.equal(offsets, torch.tensor([0, 4, 8])) and torch.allclose(
            weights, torch.full((3,), 1.5)
        )
        for reader, start in zip(users.tolist(), offsets.tolist(), strict=True):
            window = set(items[start : start + 4].tolist())
            assert len(window) == 4 and window <= set(data.train[reader].indices.tolist())
        counts.index_add_(0, items, weights[torch.repeat_interleave(torch.arange(3), 4)])
    # every book of the three histories is summed with weight 1 on average, the others never
    expected = torch.zeros(data.n_items)
    expected[whole] = 1.0
    torch.testing.assert_close(counts / draws, expected, atol=0.06, rtol=0)
    same, _, _ = rows.of(users, 6, generator)  # a sample as long as the rows: the rows themselves
    assert sorted(same.tolist()) == sorted(whole.tolist())


def test_an_epoch_in_reader_chunks_keeps_each_positive_once_in_runs_of_one_reader():
    """`train.reader_chunk`: every positive once an epoch; each reader's positives cut into chunks of
    `chunk` (and one of the remainder), each chunk consecutive in the order, so a batch reads few
    readers' histories; 0 is the shuffle of one positive at a time, as before; the order is the seed's."""
    from pipeline.model.sampling import epoch_order

    rng = np.random.default_rng(0)
    counts = rng.integers(1, 40, 500)
    users = torch.from_numpy(rng.permutation(np.repeat(np.arange(500), counts)))
    chunk = 8
    order = epoch_order(users, chunk, torch.Generator().manual_seed(1))
    assert torch.equal(order.sort().values, torch.arange(len(users)))
    readers = users[order].numpy()
    cuts = np.flatnonzero(np.diff(readers)) + 1
    for run in np.split(readers, cuts):  # a run: one chunk, or chunks of one reader that met by chance
        assert len(run) % chunk in (0, counts[run[0]] % chunk)
    assert len(cuts) + 1 >= (-(-counts // chunk)).sum() * 0.95  # chunks rarely meet
    assert torch.equal(order, epoch_order(users, chunk, torch.Generator().manual_seed(1)))
    assert torch.equal(
        epoch_order(users, 0, torch.Generator().manual_seed(1)),
        torch.randperm(len(users), generator=torch.Generator().manual_seed(1)),
    )


def test_reader_chunks_apply_only_where_a_batch_would_read_more_history_than_the_threshold():
    """`train.reader_chunk_above`: the expected history entries of a batch drawn one positive at a time
    (each drawn reader's whole history once) agree with drawing such batches; chunks apply above the
    threshold, never below it, always with a threshold of 0; an epoch takes its chunk from params.yaml's
    threshold."""
    from pipeline.model.sampling import expected_history_entries, reader_chunk
    from pipeline.model.train import _Epoch

    rng = np.random.default_rng(3)
    counts = np.concatenate([rng.integers(1, 5, 900), rng.integers(50, 400, 40)])  # a few heavy readers
    users = torch.from_numpy(np.repeat(np.arange(len(counts)), counts))
    batch = 256
    expected = expected_history_entries(users, batch)
    drawn = [
        counts[np.unique(users[rng.choice(len(users), batch, replace=False)].numpy())].sum()
        for _ in range(400)
    ]
    assert abs(expected - np.mean(drawn)) < 0.03 * np.mean(drawn)
    assert reader_chunk(users, batch, 8, above=int(expected) + 1) == 0
    assert reader_chunk(users, batch, 8, above=int(expected) - 1) == 8
    assert reader_chunk(users, batch, 8, above=0) == 8
    assert reader_chunk(users, batch, 0, above=1) == 0
    data = planted()
    assert (
        _Epoch.of(data, small_params(reader_chunk=8, reader_chunk_above=0), torch.device("cpu")).reader_chunk
        == 8
    )
    assert (
        _Epoch.of(data, small_params(reader_chunk=8), torch.device("cpu")).reader_chunk == 0
    )  # params.yaml's threshold


def test_hard_negatives_are_the_highest_scored_by_the_model_without_dropout():
    data = planted()
    model = build_model(data, small_params(dropout=0.5))
    model.train()
    users = torch.arange(0, 120, 7)
    negatives = torch.randint(0, data.n_items, (len(users), 6), generator=torch.Generator().manual_seed(3))
    terms = model.history_terms(data.train[users.numpy()])
    user = model.user_vectors(users, data.user_features[users], terms)
    items = torch.arange(data.n_items)
    table = model.item_vectors(items, data.item_features[items])
    chosen = _hardest(model, user, table, negatives, keep=2, chunk=5)
    assert model.training  # left in training mode
    model.eval()
    with torch.no_grad():
        scores = model.score(user, table.take(negatives))
    expected = negatives.gather(1, scores.topk(2, dim=1).indices)
    assert torch.equal(chosen, expected)


def test_sampler_never_returns_a_positive_and_reports_collisions():
    dense = np.zeros((50, 40), dtype=np.float32)
    dense[:, :20] = 1  # every user read half the catalog
    sampler = NegativeSampler(sp.csr_matrix(dense))
    generator = torch.Generator().manual_seed(0)
    users = torch.arange(50).repeat(20)
    negatives = sampler.sample(users, 8, generator)
    assert negatives.shape == (1000, 8)
    assert bool((negatives >= 20).all())
    assert sampler.stats.collision_rate == pytest.approx(0.5, abs=0.03)
    assert sampler.stats.left_colliding == 0
    popular = NegativeSampler(sp.csr_matrix(dense), distribution="popularity")
    assert bool((popular.sample(users, 4, generator) >= 20).all())


def test_popularity_draws_follow_the_distribution_and_the_fallback_finds_the_last_free_book():
    counts = np.array([0, 3, 8, 0, 24, 99])
    rows = np.repeat(np.arange(len(counts)), counts)  # item j read by counts[j] of 99 readers
    readers = np.concatenate([np.arange(c) for c in counts])
    read = sp.csr_matrix((np.ones(len(rows), np.float32), (readers, rows)), shape=(99, 6))
    sampler = NegativeSampler(read, distribution="popularity", power=1.0)
    draws = sampler._draw((200_000,), torch.Generator().manual_seed(1))
    expected = (counts + 1) / (counts + 1).sum()
    np.testing.assert_allclose(np.bincount(draws.numpy(), minlength=6) / 200_000, expected, atol=0.005)
    # reader 0 read items 1, 2, 4 and 5; a few of its draws keep colliding, the fallback is exact
    nearly_all = sp.csr_matrix(np.array([[1, 1, 1, 0, 1, 1, 1, 1, 1, 1]], dtype=np.float32))
    fallback = NegativeSampler(nearly_all, max_rounds=0)
    negatives = fallback.sample(torch.zeros(50, dtype=torch.long), 3, torch.Generator().manual_seed(0))
    assert bool((negatives == 3).all()) and fallback.stats.left_colliding == 0


def test_two_one_epoch_runs_with_one_seed_give_identical_weights():
    data = planted()
    params = small_params(epochs=1)
    first, second = build_model(data, params), build_model(data, params)
    fit(first, data, params, show_progress=False)
    fit(second, data, params, show_progress=False)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    other = build_model(data, params.model_copy(update={"seed": 7}))
    fit(other, data, params.model_copy(update={"seed": 7}), show_progress=False)
    assert not torch.equal(
        first.state_dict()["item_gmf.ids.weight"], other.state_dict()["item_gmf.ids.weight"]
    )


def test_the_learning_rate_decays_by_epoch_and_a_constant_rate_is_the_default():
    data = planted()
    decayed = fit(build_model(data, small_params()), data, small_params(epochs=3, lr_decay=0.5), None, False)
    assert [row["lr"] for row in decayed.epochs] == pytest.approx([0.02, 0.01, 0.005])
    constant = fit(build_model(data, small_params()), data, small_params(epochs=2, lr_decay=1.0), None, False)
    assert [row["lr"] for row in constant.epochs] == pytest.approx([0.02, 0.02])


def test_config_round_trip_and_ablation_switches():
    config = NCFConfig(
        n_users=3,
        n_items=4,
        user_features={"age_bucket": 2},
        item_features={"author": 2},
        mlp_layers=(8, 4),
        use_history=False,
        use_side_features=False,
    )
    assert NCFConfig.from_json(config.to_json()) == config
    model = NCF(config)
    assert model.history_terms(sp.csr_matrix((1, 4), dtype=np.float32)) is None
    assert not any("features" in name for name, _ in model.named_parameters())


def test_similar_books_through_the_ann_index_match_exact_search(trained_project):
    """Above `serve.ann_threshold` books, similar books come from an HNSW index: same neighbours here."""
    from pipeline.serving.service import BookRecommender
    from pipeline.storage.bundle import load_bundle

    exact = BookRecommender(load_bundle(trained_project / "models" / "ncf"))
    bundle = load_bundle(trained_project / "models" / "ncf")
    bundle.metadata["ann_threshold"] = 0
    approximate = BookRecommender(bundle)
    assert exact.similarity.index is None and approximate.similarity.index is not None
    isbns = exact.items["isbn"].head(20).tolist()
    a, b = exact.similar_books(isbns, 5), approximate.similar_books(isbns, 5)
    overlap = (a["similar_isbn"] == b["similar_isbn"]).mean()
    assert overlap > 0.95 and not (b["isbn"] == b["similar_isbn"]).any()
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-4, rtol=0)


def test_loading_a_version_builds_no_index_until_one_is_needed(trained_project):
    """The gate and evaluation rank in full: loading builds neither HNSW index (minutes at a large
    catalog); the first similar-books request, or `build_indexes` (what a serving holder calls before a
    version serves), builds them once, shared by both engines, with the same answers either way."""
    from pipeline.serving.service import BookRecommender
    from pipeline.storage.bundle import load_bundle

    def loaded() -> BookRecommender:
        bundle = load_bundle(trained_project / "models" / "ncf")
        bundle.metadata["ann_threshold"] = 0
        bundle.metadata["retrieval"] = {"candidates": 20, "min_catalog": 0}
        return BookRecommender(bundle)

    lazy, eager = loaded(), loaded()
    engines = lazy.engines.values()
    assert all(engine.two_stage for engine in engines)
    assert not lazy.similarity.built and not any(engine.has_candidate_index for engine in engines)
    isbns = lazy.items["isbn"].head(10).tolist()
    answer = lazy.similar_books(isbns, 5)
    assert lazy.similarity.built and not any(engine.has_candidate_index for engine in engines)

    eager.build_indexes()
    assert eager.similarity.built and all(engine.has_candidate_index for engine in eager.engines.values())
    assert eager.engines["train"].candidate_index() is eager.engines["all"].candidate_index()
    pd.testing.assert_frame_equal(answer, eager.similar_books(isbns, 5))
    readers = lazy.users["user_id"].head(5).astype(str).tolist()
    pd.testing.assert_frame_equal(lazy.recommend(readers, k=10), eager.recommend(readers, k=10))
    assert lazy.engines["all"].has_candidate_index


def test_the_wall_clock_guard_fails_training_loudly_instead_of_stopping_early():
    from pipeline.model.train import TrainingTimeout

    data = planted()
    params = small_params(epochs=3, max_seconds=1e-9)
    with pytest.raises(TrainingTimeout, match="train.max_seconds"):
        fit(build_model(data, params), data, params, validate=None, show_progress=False)
