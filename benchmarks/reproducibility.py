"""Two trainings of NCF from the same inputs, one after the other: do they give the same model?

    python benchmarks/reproducibility.py [--root PATH] [--threads N]   (needs `dvc repro` done there)

Trains twice with the params.yaml train section (`--threads` overrides train.threads; 0 = every
core) into scratch folders below reports/, then prints for each run the best epoch, the validation
NDCG@10 with the neighbourhood term, the test NDCG@10 of the served blend (protocol bx-implicit-v2,
the evaluator's ranking) and whether the two weight files are bit-identical.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from pipeline import stages
from pipeline.config import Workspace
from pipeline.evaluation.evaluate import ndcg_at
from pipeline.storage.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]


def _scratch(ws: Workspace, name: str) -> Workspace:
    folder = Path("reports") / "benchmark-reproducibility" / name
    return Workspace(
        ws.root, ws.paths.model_copy(update={"model": str(folder / "model"), "reports": str(folder)})
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--threads", type=int, default=None, help="override train.threads")
    args = parser.parse_args()
    ws, params = Workspace.load(args.root, None if args.threads is None else {"train.threads": args.threads})
    test = stages.evaluation_data(ws, params, "test")
    rows = []
    for name in ("first", "second"):
        scratch = _scratch(ws, name)
        summary = stages.train(scratch, params, show_progress=False)
        bundle = load_bundle(scratch.model)
        served = ndcg_at(bundle.recommender(test.train), test, batch_size=256)
        weights = hashlib.sha256((scratch.model / "weights.safetensors").read_bytes()).hexdigest()
        rows.append((name, summary, served, weights))
        print(f"{name}: {summary}", flush=True)
    print(f"threads {params.train.threads} (0 = every core)")
    print("| run | best epoch | val NDCG@10 (blend) | test NDCG@10 (served) | weights sha256 |")
    print("|---|---|---|---|---|")
    for name, summary, served, weights in rows:
        print(
            f"| {name} | {summary['best_epoch']} | {summary['val_ndcg_at_10_with_neighbourhood']:.4f} "
            f"| {served:.4f} | {weights[:12]} |"
        )
    (_, first, first_test, first_weights), (_, second, second_test, second_weights) = rows
    key = "val_ndcg_at_10_with_neighbourhood"
    print(
        f"difference: validation {abs(first[key] - second[key]):.5f}, test {abs(first_test - second_test):.5f}; "
        f"weights bit-identical: {first_weights == second_weights}"
    )


if __name__ == "__main__":
    main()
