"""Train variants of the train section (one JSON override each) and compare them on validation only:
NDCG@10 of the network alone and blended with the BM25 ItemKNN term, on every validation reader.

    python benchmarks/train_variants.py [--root PATH] '{}' '{"lr": 0.002, "patience": 2}' ...

Each variant runs the train stage itself (early stopping on its 5,000-reader sample) into a scratch
folder under reports/, so the pipeline's model is never replaced. The term is refitted with the
params.yaml settings and every weight of `train.neighbourhood.weights` is tried, as the stage does, but
on every validation reader. Nothing of the test split is read.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pipeline import stages
from pipeline.config import Workspace
from pipeline.evaluation.baselines import ItemKNNRecommender
from pipeline.evaluation.evaluate import ndcg_of
from pipeline.model.neighbourhood import Neighbourhood
from pipeline.storage.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]
BATCH = 512


def validation_ndcg(network, validation, users, similarity, weight: float) -> float:
    """NDCG@10 on `users` of the network's scores, blended with the term at `weight` (0: alone)."""
    tops = []
    for start in range(0, len(users), BATCH):
        batch = users[start : start + BATCH]
        scores = network.score_users(batch)
        if weight:
            scores = Neighbourhood(similarity, weight).blend(scores, validation.train[batch])
        tops.append(validation.ranker.top_k(scores.copy(), validation.exclude[batch], 10)[0])
    return ndcg_of(np.concatenate(tops), validation.truth[users], 10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="workspace with `dvc repro` done")
    parser.add_argument("variants", nargs="+", help="train-section overrides as JSON objects")
    args = parser.parse_args()
    ws, params = Workspace.load(args.root)
    validation = stages.evaluation_data(ws, params, "validation")
    users = validation.users_with_truth()
    term = params.train.neighbourhood
    similarity = (
        ItemKNNRecommender("bm25", neighbours=term.neighbours, k1=term.k1, b=term.b)
        .fit(validation.train)
        .similarity
    )
    scratch = ws.paths.model_copy(
        update={"model": "reports/train-variants/model", "reports": "reports/train-variants"}
    )
    print(f"{len(users)} validation readers; term: {term.neighbours} neighbours, K1 {term.k1}, B {term.b}")
    for text in args.variants:
        overrides = json.loads(text)
        variant = params.model_copy(update={"train": params.train.model_copy(update=overrides)})
        started = time.perf_counter()
        summary = stages.train(Workspace(ws.root, scratch), variant, show_progress=False)
        seconds = time.perf_counter() - started
        network = load_bundle(ws.root / scratch.model).recommender(validation.train, neighbourhood=False)
        alone = validation_ndcg(network, validation, users, similarity, 0.0)
        blended = {w: validation_ndcg(network, validation, users, similarity, w) for w in term.weights if w}
        best = max(blended, key=blended.get)
        print(
            f"{json.dumps(overrides)}: epochs {summary['epochs_run']} (best {summary['best_epoch']}), "
            f"{seconds:.0f} s; validation NDCG@10 network {alone:.4f}, with the term {blended[best]:.4f} "
            f"(weight {best:g})",
            flush=True,
        )


if __name__ == "__main__":
    main()
