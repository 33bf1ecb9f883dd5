"""Time of one training step as the catalog grows, the batch staying the same.

    python benchmarks/train_step.py [--root PATH] [--scales 1,10,100] [--steps 12] [--warmup 3]
                                    [--threads 0] [--optimizer auto|adam|lazy_adam|rowwise_adagrad]

Needs the trained model and the data of `dvc repro` (models/ncf, data/processed, data/features).
At scale s the catalog holds s times Book-Crossing's books: the trained item tables (book-id
embeddings of both towers, item biases, the history tables) tiled s times with Gaussian noise
(a tenth of each table's spread) and the books' side features tiled with them; the readers, their
histories and the batches of positives are the real ones. Two kinds of batch per scale:

- `same batch`: the very batches of 1x, negatives included (drawn by 1x's sampler): what the catalog's
  size alone costs a step, every step reading and updating the same rows of larger tables;
- `spread`: negatives drawn from the whole tiled catalog (the copies, never read, have the smallest
  popularity weight): a larger catalog spreads a batch's negatives over more distinct books, up to
  batch x (1 + negatives) of them, and a step's work follows that count.

Every scale runs the same seeded batches through `train.train_step` (the loss, backward and both
optimizers' steps; `train.embedding_optimizer` unless --optimizer), one scale after the other in one
process; prints the median step time per scale and kind, its ratio to 1x, the distinct books per
batch and the peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._training import training_inputs  # noqa: E402
from pipeline.config import Workspace  # noqa: E402
from pipeline.model.ncf import NCF  # noqa: E402
from pipeline.model.optim import optimizers  # noqa: E402
from pipeline.model.train import TrainingData, _Epoch, set_threads, train_step  # noqa: E402
from pipeline.storage.bundle import load_bundle  # noqa: E402

ITEM_ROWS = ("item_gmf.ids.weight", "item_mlp.ids.weight", "item_bias.weight")
HISTORY_ROWS = ("user_gmf.history.weight", "user_mlp.history.weight")


def tiled(table: torch.Tensor, copies: int, rows: int, generator: torch.Generator) -> torch.Tensor:
    """`rows` first rows of `table` repeated `copies` times, every copy after the first with noise."""
    head = table[:rows]
    out = head.repeat(copies, 1)
    spread = 0.1 * float(head.std())
    for copy in range(1, copies):  # one copy at a time: no catalog-sized noise tensor
        out[copy * rows : (copy + 1) * rows] += torch.randn(head.shape, generator=generator) * spread
    return out


def scaled_model(model: NCF, copies: int, generator: torch.Generator) -> NCF:
    """The trained model with a catalog `copies` times as large (item and history tables tiled)."""
    n = model.config.n_items
    with torch.device("meta"):  # no initial weights: the tiled tables are assigned below
        big = NCF(replace(model.config, n_items=n * copies))
    state = dict(model.state_dict())
    for name in ITEM_ROWS:  # the extra last row (unknown item) is not used in training
        state[name] = torch.cat([tiled(state[name], copies, n, generator), state[name][n:]])
    for name in HISTORY_ROWS:
        state[name] = tiled(state[name], copies, n, generator)
    big.load_state_dict(state, assign=True)
    return big


def scaled_data(data: TrainingData, copies: int) -> TrainingData:
    n = data.n_items
    features = data.item_features
    item_features = torch.cat([features[:n].repeat(copies, 1), features[n:]])
    train = sp.csr_matrix(
        (data.train.data, data.train.indices, data.train.indptr), shape=(data.n_users, n * copies)
    )
    return TrainingData(
        train, data.user_features, item_features, data.user_feature_sizes, data.item_feature_sizes
    )


def time_steps(
    model, data, params, steps: int, warmup: int, sampler=None
) -> tuple[list[float], list[int], list]:
    """Step times and distinct books per batch; `sampler` replaces the epoch's own (1x's: the same
    negatives at every scale)."""
    epoch = _Epoch.of(data, params, torch.device("cpu"))
    if sampler is not None:
        epoch = replace(epoch, sampler=sampler)
    steppers = optimizers(
        model, params.lr, params.embedding_lr, params.embedding_optimizer, params.mlp_weight_decay
    )
    order = torch.randperm(len(epoch.users), generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    model.train()
    times, distinct = [], []
    for step in range(warmup + steps):
        batch = order[step * params.batch_size : (step + 1) * params.batch_size]
        started = time.perf_counter()
        train_step(model, data, epoch, batch, params, generator, steppers)
        elapsed = time.perf_counter() - started
        if step >= warmup:
            times.append(elapsed)
            distinct.append(int(model.item_gmf.ids.weight.grad.coalesce().indices().shape[1]))
    return times, distinct, steppers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=ROOT, help="workspace with `dvc repro` done")
    parser.add_argument("--scales", default="1,10,100", help="catalog sizes, in Book-Crossing catalogs")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="override train.threads")
    parser.add_argument("--optimizer", default=None, help="override train.embedding_optimizer")
    args = parser.parse_args()
    ws, params = Workspace.load(args.root)
    overrides = {"threads": args.threads, "embedding_optimizer": args.optimizer}
    train_params = params.train.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    set_threads(train_params.threads)
    data = training_inputs(ws)
    trained = load_bundle(ws.model).model
    generator = torch.Generator().manual_seed(0)
    print(
        f"batch {train_params.batch_size} positives x {train_params.negatives} negatives "
        f"(hardest {train_params.hard_negatives}), tables' optimizer {train_params.embedding_optimizer}, "
        f"{torch.get_num_threads()} threads"
    )
    same_batches = _Epoch.of(data, train_params, torch.device("cpu")).sampler
    base: dict[str, float] = {}
    for copies in (int(s) for s in args.scales.split(",")):
        model = scaled_model(trained, copies, generator) if copies > 1 else trained
        scaled = scaled_data(data, copies)
        for kind, sampler in (("same batch", same_batches), ("spread", None)):
            if copies == 1 and kind == "spread":
                continue  # at 1x the two are the same batches
            times, distinct, steppers = time_steps(
                model, scaled, train_params, args.steps, args.warmup, sampler
            )
            median = statistics.median(times)
            base.setdefault("same batch", median)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            print(
                f"{copies:>4}x {kind:<10}: {model.config.n_items:>9,} books  step median "
                f"{median * 1000:7.1f} ms (min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f})  "
                f"x{median / base['same batch']:.2f} of 1x  distinct books per batch {int(np.mean(distinct)):,}  "
                f"{type(steppers[0]).__name__}  peak RSS so far {rss:.1f} GiB",
                flush=True,
            )
        del model


if __name__ == "__main__":
    main()
