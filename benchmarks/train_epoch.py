"""One training epoch of the params.yaml train section, without validation, on a workspace's data.

    python benchmarks/train_epoch.py [--root PATH] [--epochs 1] [--devices cpu,cuda] [--json]

Needs data/processed and data/features (`dvc repro features`). Builds the model, trains `--epochs`
epochs with `train.fit` (no validation, so no full-catalog scoring) on each of `--devices` (default:
the CPU, and CUDA too where torch sees a GPU) and prints the seconds of the training itself, the
steps, the positives per second and the peak RSS (with --json, one JSON line per device:
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

import torch  # noqa: E402

from benchmarks._training import training_inputs  # noqa: E402
from pipeline.config import Workspace, load_params  # noqa: E402
from pipeline.model.train import build_model, fit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=ROOT, help="workspace with the features stage done")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--devices", default=None, help="comma-separated: cpu, cuda")
    parser.add_argument("--json", action="store_true", help="print one JSON line per device")
    args = parser.parse_args()
    devices = (
        args.devices.split(",") if args.devices else ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    )
    ws, _ = Workspace.load(args.root)
    loading = time.perf_counter()
    data = training_inputs(ws)
    loaded = time.perf_counter() - loading
    for device in devices:
        report(ws, data, args, device, loaded)


def report(ws: Workspace, data, args, device: str, loaded: float) -> None:
    params = load_params(ws.root)
    train = params.train.model_copy(update={"epochs": args.epochs, "max_seconds": 0, "device": device})
    model = build_model(data, train)
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
        "device": device,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    if args.json:
        print("@@EPOCH@@" + json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
