"""Fit and full-ranking evaluation time of every baseline on the bx-implicit-v2 test split.

    python benchmarks/evaluate_speed.py        (needs data/processed from `dvc repro`)

"Evaluate" is the whole evaluator: ranking every item for every test user through the one ranking path,
top-50 lists, and every accuracy and beyond-accuracy metric at K = 10 and 20.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

from pipeline import stages
from pipeline.config import Workspace
from pipeline.evaluation.baselines import make_baseline
from pipeline.evaluation.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ws, params = Workspace.load(ROOT)
    started = time.perf_counter()
    data = stages.evaluation_data(ws, params, "test")
    print(
        f"evaluation data (matrices, TF-IDF of {data.n_items} books): {time.perf_counter() - started:.1f} s"
    )
    candidates = {
        name: (lambda name=name, options=options: make_baseline(name, **options).fit(data.train))
        for name, options in params.evaluate.baselines().items()
    }
    if (ws.model / "weights.safetensors").is_file():
        from pipeline.model.recommender import NCFRecommender
        from pipeline.storage.bundle import load_bundle

        bundle = load_bundle(ws.model)
        features = (bundle.user_feature_tensor(), bundle.item_feature_tensor())
        candidates = {
            "ncf (served)": lambda: NCFRecommender(
                bundle.model, *features, data.train, neighbourhood=bundle.neighbourhood
            ),
            "ncf (network alone)": lambda: NCFRecommender(bundle.model, *features, data.train),
        } | candidates
    print(f"{'model':<20}{'fit s':>8}{'evaluate s':>12}{'of which ranking s':>20}{'users':>8}{'NDCG@10':>9}")
    for name, build in candidates.items():
        started = time.perf_counter()
        model = build()
        fitted = time.perf_counter() - started
        started = time.perf_counter()
        batch = 256 if name.startswith("ncf") else params.evaluate.batch_size  # NCF scores through its MLP
        report = evaluate(model, data, params.evaluate.ks, params.evaluate.curve_max_k, batch_size=batch)
        print(
            f"{name:<20}{fitted:>8.1f}{time.perf_counter() - started:>12.1f}{report.seconds['rank']:>20.1f}"
            f"{report.seconds['users']:>8}{report.metrics['@10']['ndcg']:>9.4f}"
        )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
