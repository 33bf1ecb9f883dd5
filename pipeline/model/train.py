"""The training loop: BPR with sampled negatives, early stopping on validation NDCG@10.

No MLflow here (tracking is its own edge); the loop returns a `History` and leaves the best weights
in the model.

A step costs what its batch touches, never the catalog: the item towers are evaluated for the
batch's distinct books only (positives and sampled negatives), the history terms for its readers'
histories only, L2 falls on those rows, and every embedding table takes a sparse gradient that the
tables' optimizer (`pipeline.model.optim`) applies to those rows alone; Adam updates the small dense
part. So a catalog a hundred times larger costs a step no more than the few more distinct books its
negatives spread over.

Under torchrun with several processes (`distributed.active()`), the same loop is data-parallel:
every rank shuffles the positives with the same seeded permutation and takes its shard of each
global batch of `batch_size` positives, the gradients are averaged over the ranks
(`distributed.average_gradients`), rank 0 validates and its figure is broadcast, so every rank takes
the same early-stopping decision and ends with the same weights. Without a process group nothing of
this runs.

`train.device` puts the model and the step on CUDA where there is one (auto) or where asked; the
shuffling and negative sampling stay on the CPU's seeded generator, so a seed draws the same batches
on either device.
"""

from __future__ import annotations

import ctypes
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm import tqdm

from pipeline.config import TrainParams
from pipeline.data.features import FeatureVocabulary
from pipeline.model import distributed
from pipeline.model.losses import bpr_loss, item_l2
from pipeline.model.ncf import NCF, ItemVectors, NCFConfig, UserVectors
from pipeline.model.optim import optimizers
from pipeline.model.rows import TrainingRows
from pipeline.model.sampling import NegativeSampler, epoch_order, reader_chunk


class TrainingTimeout(RuntimeError):
    """Training passed its wall-clock guard (`train.max_seconds`)."""


class TrainingFailed(RuntimeError):
    """Training cannot produce a model worth keeping: a non-finite loss, or no validation figure."""


@dataclass
class TrainingData:
    train: sp.csr_matrix  # (n_users, n_items) binary positives of the train split
    user_features: torch.Tensor  # (n_users + 1, n_user_features) long; the last row is the unknown user
    item_features: torch.Tensor  # (n_items + 1, n_item_features) long
    user_feature_sizes: dict[str, int]
    item_feature_sizes: dict[str, int]

    @property
    def n_users(self) -> int:
        return self.train.shape[0]

    @property
    def n_items(self) -> int:
        return self.train.shape[1]

    def to(self, device: torch.device) -> TrainingData:
        """The feature tables on `device` (the training matrix stays a scipy matrix)."""
        return replace(
            self, user_features=self.user_features.to(device), item_features=self.item_features.to(device)
        )


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_validation_ndcg: float = float("-inf")
    seconds_to_best: float = 0.0
    seconds_total: float = 0.0
    stopped_because: str = ""
    sampler_collision_rate: float = 0.0
    embedding_optimizer: str = ""  # the tables' optimizer that trained (train.embedding_optimizer resolved)
    reader_chunk: int = 0  # the chunks an epoch's order kept each reader's positives in (0: none)

    def as_dict(self) -> dict:
        return {key: getattr(self, key) for key in self.__dataclass_fields__}


def seed_everything(seed: int) -> torch.Generator:
    """Seeds the global torch RNG (dropout) and returns the generator for shuffling and sampling."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed blocks instead of returning each large one to the system.

    A training step allocates and frees tensors of the size of an embedding table (36 MB at 35k books
    x 256) dozens of times; by default each is a fresh mmap whose pages fault in on first touch, which
    cost a third of a step on the real data. mallopt is glibc's documented switch (M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD); elsewhere this does nothing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    # Both values must fit a C int (ctypes truncates larger ones silently): 1 GiB each.
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)


def set_threads(threads: int) -> int:
    """`threads` torch threads; 0 = every core, shared among the training processes on this machine."""
    count = threads if threads > 0 else max(1, (os.cpu_count() or 1) // distributed.local_processes())
    torch.set_num_threads(count)
    # Deterministic kernels: with every core, two runs on the real data gave different weights and
    # best epochs (test NDCG@10 0.0773 and 0.0780) without this; with it they are bit-identical
    # (benchmarks/reproducibility.py). warn_only: an op without a deterministic kernel warns, never fails.
    torch.use_deterministic_algorithms(True, warn_only=True)
    return count


def resolve_device(setting: str) -> torch.device:
    """`train.device`: auto = CUDA where a GPU is visible, else the CPU; cuda without one is an error.
    Under torchrun each process takes the GPU of its local rank."""
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TrainingFailed("train.device is cuda but torch sees no CUDA device; use auto or cpu")
    # deterministic cuBLAS kernels need a fixed workspace (torch.use_deterministic_algorithms)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return torch.device("cuda", distributed.local_rank())


def build_model(data: TrainingData, params: TrainParams) -> NCF:
    """A freshly initialised NCF; the same seed gives the same initial weights."""
    torch.manual_seed(params.seed)
    config = NCFConfig(
        n_users=data.n_users,
        n_items=data.n_items,
        user_features=data.user_feature_sizes,
        item_features=data.item_feature_sizes,
        gmf_dim=params.gmf_dim,
        mlp_dim=params.mlp_dim,
        mlp_layers=tuple(params.mlp_layers),
        dropout=params.dropout,
        use_history=params.use_history,
        use_user_id=params.use_user_id,
        use_side_features=params.use_side_features,
        history_alpha=params.history_alpha,
        init_std=params.init_std,
    )
    return NCF(config)


@dataclass
class _Epoch:
    """What one epoch needs besides the model: the training pairs (on the CPU, where they are shuffled
    and their negatives drawn) and the readers' history rows (on the training device)."""

    users: torch.Tensor  # (N,) the user of each training positive
    items: torch.Tensor  # (N,) the positive
    rows: TrainingRows  # the training matrix by user, for the batch readers' histories
    sampler: NegativeSampler
    reader_chunk: int  # positives of one reader kept together in an epoch's order (0: none)

    @classmethod
    def of(cls, data: TrainingData, params: TrainParams, device: torch.device) -> _Epoch:
        train = data.train.tocoo()
        users = torch.from_numpy(train.row.astype(np.int64))
        return cls(
            users,
            torch.from_numpy(train.col.astype(np.int64)),
            TrainingRows.of_matrix(data.train).to(device),
            NegativeSampler(data.train, params.negative_sampling, params.popularity_power),
            reader_chunk(users, params.batch_size, params.reader_chunk, params.reader_chunk_above),
        )


def _hardest(
    model: NCF, user: UserVectors, table: ItemVectors, negative: torch.Tensor, keep: int, chunk: int = 1024
) -> torch.Tensor:
    """Dynamic negative sampling (Zhang et al., 2013): the `keep` highest-scored of the sampled
    negatives (rows of `table`), which carry the gradient that uniform negatives mostly lack. Chosen
    by the model's scores without dropout and without gradients (only the kept ones are scored again
    with them), a chunk of rows at a time so the gathered vectors stay in cache."""
    model.eval()
    try:
        with torch.no_grad():
            user = UserVectors(*(v.detach() for v in user))
            table = ItemVectors(*(v.detach() for v in table))
            scores = torch.cat(
                [
                    model.score(
                        UserVectors(*(v[start : start + chunk] for v in user)),
                        table.take(negative[start : start + chunk]),
                    )
                    for start in range(0, len(negative), chunk)
                ]
            )
    finally:
        model.train()
    return negative.gather(1, scores.topk(keep, dim=1).indices)


def _batch_loss(model: NCF, data: TrainingData, epoch: _Epoch, batch: torch.Tensor, params, generator):
    """BPR loss of one batch of positives against sampled (or the hardest sampled) negatives.

    The item towers run on the batch's distinct books only: `rows` maps each (positive, negatives)
    slot to its book's row of that small table."""
    device = model.device
    negative = epoch.sampler.sample(epoch.users[batch], params.negatives, generator)  # (B, n)
    u, positive = epoch.users[batch].to(device), epoch.items[batch].to(device)
    books, rows = torch.unique(
        torch.cat([positive.unsqueeze(1), negative.to(device)], 1), return_inverse=True
    )
    table = model.item_vectors(books, data.item_features[books])  # (distinct books, d)
    terms = model.training_history_terms(epoch.rows, u, positive, params.history_sample, generator)
    user = model.user_vectors(u, data.user_features[u], terms)
    positive_rows, negative_rows = rows[:, 0], rows[:, 1:]
    hard = params.hard_negatives
    ranked = _hardest(model, user, table, negative_rows, hard) if hard else negative_rows
    scores = model.score(user, table.take(torch.cat([positive_rows.unsqueeze(1), ranked], dim=1)))
    loss = bpr_loss(scores[:, 0], scores[:, 1:])
    if params.l2 > 0:
        loss = loss + params.l2 * item_l2(table, positive_rows, negative_rows)
    return loss


class _DataParallel:
    """One rank's share of each step: its shard of the global batch.

    A shard's loss is a mean over its own positives; scaled by shard size x world size / global batch
    size, the mean over the ranks of their gradients (`distributed.average_gradients`) is the
    gradient of the global batch's mean loss (BPR and L2 alike), whatever the shard sizes."""

    def __init__(self, params: TrainParams):
        # Shuffling uses the run's generator (the same permutation on every rank); negatives and
        # dropout use this rank's own streams.
        seed = distributed.rank_seed(params.seed)
        torch.manual_seed(seed)
        self.sampling = torch.Generator().manual_seed(seed)
        self.world = distributed.world_size()

    def loss(
        self, model: NCF, data: TrainingData, epoch: _Epoch, batch: torch.Tensor, params
    ) -> torch.Tensor:
        shard = distributed.shard(batch)
        loss = _batch_loss(model, data, epoch, shard, params, self.sampling)
        return loss * (len(shard) * self.world / len(batch))


def train_step(
    model: NCF,
    data: TrainingData,
    epoch: _Epoch,
    batch: torch.Tensor,
    params: TrainParams,
    generator: torch.Generator,
    steppers: list[torch.optim.Optimizer],
    parallel: _DataParallel | None = None,
    where: str = "",
) -> float:
    """One optimisation step on `batch` (this rank's shard of it when data-parallel); returns its loss.
    A non-finite loss stops training with an error naming `where`, before any weight moves."""
    if parallel is None:
        loss = _batch_loss(model, data, epoch, batch, params, generator)
    else:
        loss = parallel.loss(model, data, epoch, batch, params)
    for optimizer in steppers:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if parallel is not None:
        distributed.average_gradients(model.parameters())
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainingFailed(
            f"the training loss is {value} at {where}: training diverged "
            "(lower train.lr or train.embedding_lr, or raise train.l2)"
        )
    for optimizer in steppers:
        optimizer.step()
    return value


def _train_epoch(
    model,
    data,
    epoch: _Epoch,
    steppers: list[torch.optim.Optimizer],
    params: TrainParams,
    generator,
    parallel: _DataParallel | None = None,
    number: int = 1,
) -> float:
    """One pass over the shuffled training positives; returns the mean batch loss (over every rank's
    positives when data-parallel). A non-finite loss stops training with an error."""
    model.train()
    order = epoch_order(epoch.users, epoch.reader_chunk, generator)
    total_loss, batches = 0.0, 0
    for start in range(0, len(order), params.batch_size):
        batch = order[start : start + params.batch_size]
        if parallel is not None and len(batch) < parallel.world:
            break  # a last batch of fewer positives than ranks (at most world - 1 of an epoch's)
        where = f"epoch {number}, step {batches + 1}"
        total_loss += train_step(model, data, epoch, batch, params, generator, steppers, parallel, where)
        batches += 1
    mean = total_loss / max(batches, 1)
    return mean if parallel is None else distributed.mean_over_ranks(mean)


class _BestWeights:
    """A copy of the weights of the best epoch so far (on the training device)."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] | None = None

    def keep(self, model: NCF) -> None:
        self.state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}

    def restore(self, model: NCF) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)
            self.state = None


def fit(
    model: NCF,
    data: TrainingData,
    params: TrainParams,
    validate: Callable[[NCF], float] | None = None,
    show_progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
) -> History:
    """Train `model` in place on `train.device` (where it stays); the weights of the best validation
    epoch are restored at the end (without `validate`, the last epoch's are kept). `on_epoch` sees
    each epoch's row (epoch, loss, validation NDCG@10, seconds) as it ends.

    A non-finite loss or a validation that gives no figure (no validation reader with held-out
    books) fails with `TrainingFailed`: never a model that silently kept its initial weights.

    Data-parallel under a process group (see the module's docstring): only rank 0 calls `validate`,
    `on_epoch` and shows progress; every rank returns the same history and weights."""
    generator = seed_everything(params.seed)
    set_threads(params.threads)
    keep_freed_memory()
    device = resolve_device(params.device)
    model.to(device)
    data = data.to(device)
    epoch_data = _Epoch.of(data, params, device)
    parallel = _DataParallel(params) if distributed.active() else None
    main = distributed.is_main()
    steppers = optimizers(
        model,
        params.lr,
        params.embedding_lr,
        params.embedding_optimizer,
        params.mlp_weight_decay,
        params.optimizer_state_gib,
    )
    schedules = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=params.lr_decay) for o in steppers]
    history, best = History(), _BestWeights()
    started = time.perf_counter()
    bad_epochs = 0
    progress = tqdm(
        range(1, params.epochs + 1), desc="train", unit="epoch", disable=not (show_progress and main)
    )
    for epoch in progress:
        rate = steppers[-1].param_groups[0]["lr"]
        loss = _train_epoch(model, data, epoch_data, steppers, params, generator, parallel, epoch)
        for optimizer in steppers:  # rows the last steps did not touch get what Adam owed them
            if hasattr(optimizer, "catch_up"):
                optimizer.catch_up()
        for schedule in schedules:
            schedule.step()
        row = {"epoch": epoch, "loss": loss, "lr": rate}
        elapsed = time.perf_counter() - started
        validating = validate is not None and (epoch % params.eval_every == 0 or epoch == params.epochs)
        figure = float("nan")
        if validating and main:
            model.eval()
            figure = validate(model)
        if parallel is not None:  # rank 0's figure and clock decide for every rank
            figure, elapsed = distributed.from_main([figure, elapsed])
        if validating:
            if not math.isfinite(figure):
                raise TrainingFailed(
                    f"validation gave NDCG@10 = {figure} after epoch {epoch}: no validation reader has "
                    "held-out books to rank (check the split's validation_fraction and the data)"
                )
            row["val_ndcg_at_10"] = figure
            if figure > history.best_validation_ndcg:
                history.best_validation_ndcg = figure
                history.best_epoch = epoch
                history.seconds_to_best = time.perf_counter() - started
                best.keep(model)
                bad_epochs = 0
            else:
                bad_epochs += 1
        elif validate is None:
            history.best_epoch = epoch
            history.seconds_to_best = time.perf_counter() - started
        row["seconds"] = time.perf_counter() - started
        history.epochs.append(row)
        if on_epoch is not None and main:
            on_epoch(row)
        progress.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k in ("loss", "val_ndcg_at_10")})
        if bad_epochs >= params.patience:
            history.stopped_because = f"no validation improvement for {params.patience} evaluations"
            break
        if params.max_seconds and elapsed > params.max_seconds:
            # A guard, never a budget: stopping early here would make the model depend on the
            # machine's load, so the stage fails loudly instead and nothing is written.
            raise TrainingTimeout(
                f"training passed train.max_seconds ({params.max_seconds:g} s) after epoch {epoch} "
                f"({elapsed:.0f} s); the epoch budget is train.epochs and train.patience. Raise the guard "
                "or lower train.epochs."
            )
    else:
        history.stopped_because = f"all {params.epochs} epochs done"
    best.restore(model)
    model.eval()
    history.seconds_total = time.perf_counter() - started
    history.sampler_collision_rate = epoch_data.sampler.stats.collision_rate
    history.embedding_optimizer = type(steppers[0]).__name__
    history.reader_chunk = epoch_data.reader_chunk
    if hasattr(steppers[0], "release"):
        steppers[0].release()
    return history


def training_data(
    train: sp.csr_matrix,
    user_features: pd.DataFrame,
    item_features: pd.DataFrame,
    vocabulary: FeatureVocabulary,
) -> TrainingData:
    """Tensors for training from the features stage's tables (rows sorted by index); the extra last row
    of each feature table is the all-unknown row used for cold-start readers."""
    from pipeline.data.features import ITEM_FEATURES, USER_FEATURES

    def table(frame, columns) -> torch.Tensor:
        values = frame.sort_values(frame.columns[0])[list(columns)].to_numpy(dtype=np.int64)
        return torch.from_numpy(np.vstack([values, np.zeros((1, len(columns)), dtype=np.int64)]))

    return TrainingData(
        train=train,
        user_features=table(user_features, USER_FEATURES),
        item_features=table(item_features, ITEM_FEATURES),
        user_feature_sizes={name: vocabulary.cardinality(name) for name in USER_FEATURES},
        item_feature_sizes={name: vocabulary.cardinality(name) for name in ITEM_FEATURES},
    )
