"""A small planted training run, in one process or as one rank under torchrun (test_ddp.py):

    torchrun --standalone --nproc-per-node 2 -m tests.model.ddp_training OUT

Every rank writes its final weights (OUT/rank<r>.pt) and its history (OUT/rank<r>.json): the test
compares the ranks with each other and with a one-process run of `run`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from pipeline.evaluation.evaluate import ndcg_of
from pipeline.model import distributed
from pipeline.model.recommender import NCFRecommender
from pipeline.model.train import TrainingData, build_model, fit
from tests.model.test_ncf import ITEMS_PER_GROUP, N_GROUPS, USERS_PER_GROUP, small_params

TRAIN_READS, HELD_OUT = 6, 2


def planted_split(seed: int = 0) -> tuple[TrainingData, sp.csr_matrix]:
    """Users of group g read books of shelf g only (their country is g), the shelf's first books more
    often (Zipf): 6 in train, 2 held out. Finding the shelf is quick; ordering it takes epochs."""
    rng = np.random.default_rng(seed)
    n_users, n_items = N_GROUPS * USERS_PER_GROUP, N_GROUPS * ITEMS_PER_GROUP
    zipf = 1.0 / np.arange(1, ITEMS_PER_GROUP + 1)
    train, held_out = [], []
    for user in range(n_users):
        books = rng.choice(ITEMS_PER_GROUP, TRAIN_READS + HELD_OUT, replace=False, p=zipf / zipf.sum())
        books += (user // USERS_PER_GROUP) * ITEMS_PER_GROUP
        train += [(user, book) for book in books[:TRAIN_READS]]
        held_out += [(user, book) for book in books[TRAIN_READS:]]

    def matrix(pairs):
        rows, cols = np.array(pairs).T
        return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))

    user_features = torch.zeros((n_users + 1, 3), dtype=torch.long)
    user_features[:n_users, 1] = torch.arange(n_users) // USERS_PER_GROUP + 1
    item_features = torch.zeros((n_items + 1, 3), dtype=torch.long)
    item_features[:n_items, 0] = torch.arange(n_items) // ITEMS_PER_GROUP + 1
    data = TrainingData(
        matrix(train),
        user_features,
        item_features,
        {"age_bucket": 3, "country": N_GROUPS + 1, "region": 2},
        {"author": N_GROUPS + 1, "publisher": 2, "decade": 2},
    )
    return data, matrix(held_out)


def params():
    # dropout and a hard negative on, so per-rank dropout and negative streams run inside DDP's forward
    return small_params(
        epochs=25, patience=4, dropout=0.1, hard_negatives=1, batch_size=128, lr=0.003, embedding_lr=0.003
    )


def run() -> tuple[torch.nn.Module, dict]:
    data, truth = planted_split()
    users = np.arange(data.n_users)

    def validate(model) -> float:
        top, _ = NCFRecommender(model, data.user_features, data.item_features, data.train).recommend(users)
        return ndcg_of(top, truth, 10)

    with distributed.process_group():
        model = build_model(data, params())
        history = fit(model, data, params(), validate, show_progress=False)
        ranks = {"rank": distributed.rank(), "world_size": distributed.world_size()}
    top, _ = NCFRecommender(model, data.user_features, data.item_features, data.train).recommend(users, k=2)
    own_shelf = float(((top // ITEMS_PER_GROUP) == (users[:, None] // USERS_PER_GROUP)).mean())
    return model, history.as_dict() | ranks | {"own_shelf_top2": own_shelf}


def main(out: Path) -> None:
    model, summary = run()
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / f"rank{summary['rank']}.pt")
    (out / f"rank{summary['rank']}.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
