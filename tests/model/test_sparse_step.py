"""The training step costs what its batch touches: the rows (and optimizer state) of books and
histories a step did not touch stay exactly as they were, the step on the batch's distinct books is
the step over every slot's own lookup, the tables' optimizers by hand, and the failures that used to
pass silently."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.evaluation.evaluate import ndcg_of
from pipeline.model.losses import bpr_loss, item_l2
from pipeline.model.optim import DeferredAdam, RowwiseAdagrad, optimizers
from pipeline.model.recommender import NCFRecommender
from pipeline.model.rows import TrainingRows, distinct_rows
from pipeline.model.train import TrainingFailed, _batch_loss, _Epoch, build_model, fit, train_step
from tests.model.test_ncf import planted, small_params

CPU = torch.device("cpu")
ITEM_TABLES = ("item_gmf.ids.weight", "item_mlp.ids.weight", "item_bias.weight")
HISTORY_TABLES = ("user_gmf.history.weight", "user_mlp.history.weight")


def _optimizer_state(steppers, model) -> dict[str, dict[str, torch.Tensor]]:
    """Every per-weight or per-row state tensor of the optimizers, cloned, by parameter name."""
    names = {id(p): name for name, p in model.named_parameters()}
    return {
        names[id(p)]: {key: value.clone() for key, value in state.items() if torch.is_tensor(value)}
        for optimizer in steppers
        for p, state in optimizer.state.items()
    }


@pytest.mark.parametrize("embedding_optimizer", ["adam", "lazy_adam", "rowwise_adagrad"])
def test_a_step_leaves_the_books_and_histories_it_did_not_touch_exactly_as_they_were(embedding_optimizer):
    data = planted()
    params = small_params(negatives=2, hard_negatives=1, embedding_optimizer=embedding_optimizer)
    model = build_model(data, params)
    epoch = _Epoch.of(data, params, CPU)
    steppers = optimizers(model, params.lr, params.embedding_lr, embedding_optimizer, params.mlp_weight_decay)
    generator = torch.Generator().manual_seed(0)
    train_step(model, data, epoch, torch.arange(0, 720, 9), params, generator, steppers)  # state everywhere
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    state = _optimizer_state(steppers, model)

    batch = torch.tensor([0, 1, 2])  # reader 0's first three books
    replay = torch.Generator()
    replay.set_state(generator.get_state())
    negatives = epoch.sampler.sample(epoch.users[batch], params.negatives, replay)
    train_step(model, data, epoch, batch, params, generator, steppers)

    books = set(epoch.items[batch].tolist()) | set(negatives.flatten().tolist())
    histories = set(data.train[epoch.users[batch].numpy()].indices.tolist())
    after = dict(model.named_parameters())
    moved_state = _optimizer_state(steppers, model)
    for names, touched in ((ITEM_TABLES, books), (HISTORY_TABLES, histories)):
        untouched = torch.tensor(sorted(set(range(data.n_items)) - touched))
        assert len(untouched) > data.n_items // 2
        for name in names:
            assert torch.equal(after[name][untouched], weights[name][untouched]), name
            assert not torch.equal(after[name], weights[name]), f"{name}: the touched rows did not move"
            for key, value in state[name].items():
                if value.dim() and len(value) == len(after[name]):  # per-row or per-weight state
                    assert torch.equal(moved_state[name][key][untouched], value[untouched]), (name, key)
                    assert not torch.equal(moved_state[name][key], value), (name, key)


def test_the_step_on_the_batchs_distinct_books_is_the_step_over_every_slots_own_lookup():
    data = planted()
    params = small_params(negatives=4, hard_negatives=0, l2=0.01)
    model = build_model(data, params)
    epoch = _Epoch.of(data, params, CPU)
    batch = torch.arange(0, 720, 5)
    generator = torch.Generator().manual_seed(2)
    replay = torch.Generator()
    replay.set_state(generator.get_state())
    loss = _batch_loss(model, data, epoch, batch, params, generator)
    loss.backward()
    fast = {name: p.grad.to_dense().clone() for name, p in model.named_parameters()}

    model.zero_grad(set_to_none=True)
    users, positives = epoch.users[batch], epoch.items[batch]
    negatives = epoch.sampler.sample(users, params.negatives, replay)
    slots = torch.cat([positives.unsqueeze(1), negatives], dim=1)  # (B, 1 + n): every slot looked up
    terms = model.training_history_terms(TrainingRows.of_matrix(data.train), users, positives)
    user = model.user_vectors(users, data.user_features[users], terms)
    items = model.item_vectors(slots, data.item_features[slots])
    scores = model.score(user, items)
    every_slot = bpr_loss(scores[:, 0], scores[:, 1:])
    all_items = torch.arange(data.n_items)
    table = model.item_vectors(all_items, data.item_features[all_items])
    every_slot = every_slot + params.l2 * item_l2(table, positives, negatives)
    every_slot.backward()
    torch.testing.assert_close(loss, every_slot)
    for name, p in model.named_parameters():
        torch.testing.assert_close(fast[name], p.grad.to_dense(), msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # the compiled loop, torch's operations
def test_deferred_adam_reads_and_reaches_dense_adams_weights(dtype):
    """Dense Adam keeps moving a row after its gradient; DeferredAdam owes that motion and pays it when
    a training step reads the row or at a catch-up: the same weights and moments as torch's Adam."""
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(40, 6, generator=generator, dtype=dtype) * 0.1
    dense = torch.nn.Parameter(start.clone())
    table = torch.nn.Embedding(40, 6, sparse=True, dtype=dtype)
    table.weight.data.copy_(start)
    reference = torch.optim.Adam([dense], lr=0.01)
    adam = DeferredAdam([table.weight], lr=0.01)
    schedules = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.5) for o in (reference, adam)]
    tolerance = {"atol": 1e-5 if dtype == torch.float32 else 1e-9, "rtol": 1e-4}
    for step in range(1, 61):
        # a few rows a step, some touched often, most rarely: gaps of every length up to 59 steps
        drawn = torch.randint(
            0, 40, (int(torch.randint(1, 6, (1,), generator=generator)),), generator=generator
        )
        rows = torch.unique(drawn**2 % 40)
        with torch.enable_grad():  # a training read: the rows catch up first, then the step's gradient
            read = distinct_rows(table, rows)
        torch.testing.assert_close(read.detach(), dense.detach()[rows], **tolerance)
        values = torch.randn(len(rows), 6, generator=generator, dtype=dtype)
        dense.grad = torch.zeros_like(dense).index_copy_(0, rows, values)
        table.weight.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values, table.weight.shape)
        reference.step()
        adam.step()
        if step % 20 == 0:  # an epoch ends: every row catches up, then the rate decays
            adam.catch_up()
            torch.testing.assert_close(table.weight.detach(), dense.detach(), **tolerance)
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(
                    adam.state[table.weight][key], reference.state[dense][key], **tolerance
                )
            for schedule in schedules:
                schedule.step()


def test_rowwise_adagrad_by_hand():
    table = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    optimizer = RowwiseAdagrad([table], lr=0.5, eps=0.0)
    # row 1 twice (its gradients add up), row 2 untouched
    table.grad = torch.sparse_coo_tensor(
        [[0, 1, 1]], torch.tensor([[2.0, 0.0], [1.0, 1.0], [1.0, 3.0]]), (3, 2)
    )
    optimizer.step()
    # row 0: g = (2, 0), G = 2, moves by -0.5 * g / sqrt(2); row 1: g = (2, 4), G = 10
    expected = torch.tensor(
        [[1 - 0.5 * 2 / 2**0.5, 2.0], [3 - 0.5 * 2 / 10**0.5, 4 - 0.5 * 4 / 10**0.5], [5.0, 6.0]]
    )
    torch.testing.assert_close(table.detach(), expected)
    torch.testing.assert_close(optimizer.state[table]["sum"], torch.tensor([2.0, 10.0, 0.0]))


def test_a_non_finite_loss_fails_training_naming_the_cause():
    data = planted()
    params = small_params(epochs=2)
    model = build_model(data, params)
    with torch.no_grad():
        model.item_gmf.ids.weight[:] = float("nan")
    with pytest.raises(TrainingFailed, match="training loss is nan at epoch 1, step 1"):
        fit(model, data, params, show_progress=False)


def test_a_validation_without_readers_fails_training_instead_of_keeping_the_initial_weights():
    data = planted()
    params = small_params(epochs=2)
    nobody = np.empty(0, dtype=np.int64)

    def validate(model) -> float:  # no validation reader has held-out books
        top, _ = NCFRecommender(model, data.user_features, data.item_features, data.train).recommend(nobody)
        return ndcg_of(top, data.train[nobody], 10)

    with pytest.raises(TrainingFailed, match="no validation reader"):
        fit(build_model(data, params), data, params, validate, show_progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_the_same_seed_reaches_the_same_validation_ndcg_on_cuda_and_on_the_cpu():
    from tests.model.ddp_training import planted_split

    data, truth = planted_split()
    users = np.arange(data.n_users)
    figures = {}
    for device in ("cpu", "cuda"):
        params = small_params(epochs=15, patience=15, device=device)

        def validate(model) -> float:
            recommender = NCFRecommender(model, data.user_features, data.item_features, data.train)
            return ndcg_of(recommender.recommend(users)[0], truth, 10)

        model = build_model(data, params)
        history = fit(model, data, params, validate, show_progress=False)
        assert model.device.type == device
        figures[device] = history.best_validation_ndcg
    assert abs(figures["cuda"] - figures["cpu"]) <= 0.001, figures
