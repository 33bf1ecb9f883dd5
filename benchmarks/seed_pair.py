"""The gate's worked example on the real data: two trainings that differ only in train.seed, registered
and judged by the offline gate (docs/lifecycle.md).

    python benchmarks/seed_pair.py [--root PATH] [--seeds 42 43]   (needs `dvc repro` done there)

The model in models/ncf (trained with the first seed by `dvc repro`) is registered and goes through
the gate (the first version passes on its floors alone); then NCF is trained again with the second
seed, evaluated, registered and judged by the gate against the first, without promoting it. Prints
each step's decision and time, and the paired comparison `bookrec gate compare` prints. Leaves
models/ncf holding the second training (`dvc checkout models/ncf` brings the first back).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pipeline import release, stages
from pipeline.config import Workspace
from pipeline.storage.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]


def _timed(label: str, step):
    started = time.perf_counter()
    result = step()
    print(f"{label}: {time.perf_counter() - started:.0f} s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--seeds", type=int, nargs=2, default=(42, 43))
    args = parser.parse_args()
    first_seed, second_seed = args.seeds
    ws, params = Workspace.load(args.root)
    trained_seed = load_bundle(ws.model).metadata["train_params"]["seed"]
    if trained_seed != first_seed:
        raise SystemExit(f"models/ncf was trained with seed {trained_seed}, not {first_seed}: run `dvc repro` first")
    first = _timed(f"register + gate, seed {first_seed}", lambda: release.register(ws, params))
    print(json.dumps(first, indent=2))
    _, second_params = Workspace.load(args.root, {"train.seed": second_seed})
    _timed(f"train, seed {second_seed}", lambda: stages.train(ws, second_params, show_progress=False))
    _timed(f"evaluate, seed {second_seed}", lambda: stages.evaluate(ws, second_params))
    second = _timed(f"register, seed {second_seed}", lambda: release.register_model(ws, second_params))
    decision = _timed(
        f"gate, seed {second_seed} against {first_seed}",
        lambda: release.gate_and_promote(ws, params, second["version"], promote=False),
    )
    print(json.dumps(decision, indent=2))
    result = _timed(
        "compare", lambda: release.compare_versions(ws, params, second["version"], first["version"])
    )
    for version, figures in result["figures"].items():
        print(f"v{version}: " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    comparison = result["comparison"]
    for name in ("ndcg", "coverage", "novelty"):
        interval = getattr(comparison, name)
        print(f"v{second['version']} - v{first['version']} {name}: {interval.text()} ({interval.method})")


if __name__ == "__main__":
    main()
