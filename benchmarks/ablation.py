"""Ablation of the NCF's parts on the full bx-implicit-v2 split: the params.yaml model against the same
model without side features or without the history term, each with and without its ItemKNN
neighbourhood term (whose weight every variant chooses on validation, like the train stage).

    python benchmarks/ablation.py [--variants full no_side_features no_history]

Each variant is trained exactly like the train stage (early stopping on validation) into a scratch
folder, then evaluated on test with the harness. Choices are made on validation; test is reported.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from pipeline import stages
from pipeline.config import Workspace
from pipeline.evaluation.evaluate import evaluate
from pipeline.model.recommender import NCFRecommender
from pipeline.storage.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "full": {},
    "no_side_features": {"use_side_features": False},
    "no_history": {"use_history": False, "use_user_id": True},
    "user_id_too": {"use_user_id": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--variants", nargs="+", default=["full", "no_side_features"], choices=sorted(VARIANTS)
    )
    args = parser.parse_args()
    ws, params = Workspace.load(ROOT)
    test = stages.evaluation_data(ws, params, "test")
    scratch = ROOT / "reports" / "ablation"
    print(
        f"{'variant':<30}{'val NDCG@10':>12}{'test NDCG@10':>13}{'Recall@10':>10}{'coverage':>9}"
        f"{'pers.':>7}{'s to best':>10}"
    )
    try:
        for name in args.variants:
            folder = scratch / name
            variant_ws = Workspace(
                ws.root,
                ws.paths.model_copy(
                    update={
                        "model": str((folder / "model").relative_to(ROOT)),
                        "reports": str(folder.relative_to(ROOT)),
                    }
                ),
            )
            variant = params.model_copy(update={"train": params.train.model_copy(update=VARIANTS[name])})
            summary = stages.train(variant_ws, variant, show_progress=False)
            bundle = load_bundle(variant_ws.model)
            features = bundle.user_feature_tensor(), bundle.item_feature_tensor()
            rows = [(name, summary["val_ndcg_at_10"], None)]
            if bundle.neighbourhood is not None:
                weight = bundle.neighbourhood.weight
                rows.append(
                    (f"{name} + ItemKNN x {weight:g}", summary["val_ndcg_at_10_with_neighbourhood"], bundle)
                )
            for label, validation_ndcg, blended in rows:
                model = NCFRecommender(
                    bundle.model, *features, test.train, neighbourhood=blended and blended.neighbourhood
                )
                at10 = evaluate(model, test, ks=(10,), curve_max_k=10, batch_size=256).metrics["@10"]
                print(
                    f"{label:<30}{validation_ndcg:>12.4f}{at10['ndcg']:>13.4f}{at10['recall']:>10.4f}"
                    f"{at10['coverage']:>9.3f}{at10['personalization']:>7.3f}"
                    f"{summary['seconds_to_best']:>10.0f}",
                    flush=True,
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
