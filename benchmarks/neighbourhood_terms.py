"""The trained network blended with BM25 ItemKNN terms of other settings, on validation only.

    python benchmarks/neighbourhood_terms.py [--root PATH] [--model DIR] 20,0.6,0.3 20,1.2,0.3 ...

Each argument is neighbours,K1,B. The network's scores are computed once for every validation reader;
each term is fitted on the train split and tried at every weight of `train.neighbourhood.weights`.
Prints validation NDCG@10 per setting and weight (how K1 0.6 was chosen; docs/model.md).
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="workspace with `dvc repro` done")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the workspace's)")
    parser.add_argument("settings", nargs="+", help="neighbours,K1,B")
    args = parser.parse_args()
    ws, params = Workspace.load(args.root)
    validation = stages.evaluation_data(ws, params, "validation")
    network = load_bundle(args.model or ws.model).recommender(validation.train, neighbourhood=False)
    users = validation.users_with_truth()
    batches = [users[start : start + BATCH] for start in range(0, len(users), BATCH)]
    scores = [network.score_users(batch) for batch in batches]
    truth = validation.truth[users]
    weights = [w for w in params.train.neighbourhood.weights if w]
    print(f"{len(users)} validation readers; the network alone is the weight 0 of the train stage")
    for setting in args.settings:
        neighbours, k1, b = setting.split(",")
        knn = ItemKNNRecommender("bm25", neighbours=int(neighbours), k1=float(k1), b=float(b))
        similarity = knn.fit(validation.train).similarity
        found = {}
        for weight in weights:
            tops = [
                validation.ranker.top_k(
                    Neighbourhood(similarity, weight).blend(batch_scores, validation.train[batch]),
                    validation.exclude[batch],
                    10,
                )[0]
                for batch, batch_scores in zip(batches, scores, strict=True)
            ]
            found[weight] = ndcg_of(np.concatenate(tops), truth, 10)
        best = max(found, key=found.get)
        figures = "  ".join(f"{w:g}: {v:.5f}" for w, v in found.items())
        print(
            f"{neighbours} neighbours, K1 {k1}, B {b}: best weight {best:g} ({found[best]:.5f})   {figures}"
        )


if __name__ == "__main__":
    main()
