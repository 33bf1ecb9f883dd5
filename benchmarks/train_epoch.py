"""One training epoch of the params.yaml train section, without validation, on a workspace's data.

    python benchmarks/train_epoch.py [--root PATH] [--epochs 1] [--json]

Needs data/processed and data/features (`dvc repro features`). Builds the model, trains `--epochs`
epochs with `train.fit` (no validation, so no full-catalog scoring) and prints the seconds of the
training itself, the steps, the positives per second and the peak RSS (with --json, one JSON line:
`benchmarks/scale.py` runs it at every scale).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._training import training_inputs  # noqa: E402
from pipeline.config import Workspace  # noqa: E402
from pipeline.model.train import build_model, fit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=ROOT, help="workspace with the features stage done")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()
    ws, params = Workspace.load(args.root)
    train = params.train.model_copy(update={"epochs": args.epochs, "max_seconds": 0})
    loading = time.perf_counter()
    data = training_inputs(ws)
    model = build_model(data, train)
    loaded = time.perf_counter() - loading
    history = fit(model, data, train, validate=None, show_progress=False)
    seconds = [row["seconds"] for row in history.epochs]
    epoch_seconds = [b - a for a, b in zip([0.0, *seconds], seconds, strict=False)]
    result = {
        "books": data.n_items,
        "readers": data.n_users,
        "train_rows": int(data.train.nnz),
        "steps_per_epoch": -(-int(data.train.nnz) // train.batch_size),
        "load_seconds": round(loaded, 2),
        "epoch_seconds": [round(s, 2) for s in epoch_seconds],
        "positives_per_second": round(data.train.nnz / min(epoch_seconds)),
        "embedding_optimizer": train.embedding_optimizer,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    if args.json:
        print("@@EPOCH@@" + json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
