"""Training speed of NCF on the full bx-implicit-v2 train split with the params.yaml train section.

    python benchmarks/train_speed.py [--root PATH] [--epochs N] [--threads T] [--seed S]
    torchrun --standalone --nproc-per-node 2 benchmarks/train_speed.py --threads 1 [--root PATH]

(needs data/processed and data/features). Under torchrun the processes train data-parallel and rank 0
prints. Prints triples (positive + sampled negatives) per second, seconds per epoch, the epoch with the
best validation NDCG@10, the time to reach it, the total time and the peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from pipeline import stages
from pipeline.config import Workspace

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=ROOT, help="workspace with `dvc repro` done")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--threads", type=int, default=None, help="override train.threads (per process)")
    parser.add_argument("--seed", type=int, default=None, help="override train.seed")
    args = parser.parse_args()
    ws, params = Workspace.load(args.root)
    overrides = {"epochs": args.epochs, "threads": args.threads, "seed": args.seed}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    params = params.model_copy(update={"train": params.train.model_copy(update=overrides)})
    # Train into a scratch folder: the benchmark must not replace the pipeline's model.
    scratch = ws.root / "reports" / "benchmark-train"
    ws = Workspace(
        ws.root,
        ws.paths.model_copy(
            update={
                "model": str(scratch.relative_to(ws.root) / "model"),
                "reports": str(scratch.relative_to(ws.root)),
            }
        ),
    )
    started = time.perf_counter()
    summary = stages.train(ws, params, show_progress=False)
    total = time.perf_counter() - started
    if "rank" in summary:  # another rank of a torchrun group: rank 0 wrote and reports
        return
    from pipeline import io

    history = io.read_json(ws.model / "history.json")
    epochs = history["epochs"]
    train_rows = len(io.read_parquet(ws.root / params.paths.processed / "train.parquet"))
    epoch_seconds = [
        b["seconds"] - a["seconds"] for a, b in zip([{"seconds": 0.0}, *epochs], epochs, strict=False)
    ]
    triples = train_rows * (1 + params.train.negatives)
    print(f"processes {summary['processes']}, threads per process {params.train.threads or 'every core'}")
    print(
        f"train rows {train_rows}, negatives {params.train.negatives} (hardest {params.train.hard_negatives})"
    )
    print(
        f"seconds per epoch (incl. validation): mean {sum(epoch_seconds) / len(epoch_seconds):.1f}, "
        f"min {min(epoch_seconds):.1f}"
    )
    print(f"triples per second: {triples / min(epoch_seconds):,.0f}")
    print(
        f"best epoch {summary['best_epoch']} (val NDCG@10 {summary['val_ndcg_at_10']:.4f}), "
        f"reached after {summary['seconds_to_best']:.1f} s; {len(epochs)} epochs in {summary['seconds_total']:.1f} s "
        f"(stage total incl. loading and saving {total:.1f} s); stopped: {summary['stopped_because']}"
    )
    print(
        f"ItemKNN neighbourhood term: weight {summary['neighbourhood_weight']:g} chosen on validation "
        f"(val NDCG@10 {summary['val_ndcg_at_10_with_neighbourhood']:.4f}), "
        f"fitted and chosen in {summary['seconds_neighbourhood']:.1f} s after training"
    )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
