"""The gate's worked example on the real data: two trainings that differ only in train.seed, registered
and judged by the offline gate (docs/lifecycle.md).

    python benchmarks/seed_pair.py [--root PATH] [--seeds 42 43]   (needs `dvc repro` done there)

The model in models/ncf (trained with the first seed by `dvc repro`) is registered and goes through
the gate (the first version passes on its floors alone); then NCF is trained again with the second
seed (into run/seed-pair/SEED/, or `--second`; models/ncf keeps the first), evaluated, registered
and judged by the gate against the first, without promoting it. Prints each step's decision and
time, and the paired comparisons the gate recorded on the second version (the figures `bookrec
gate compare` prints).
"""

from __future__ import annotations

import argparse
import json
import shutil
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
    parser.add_argument(
        "--second",
        help="folder (below the root) of the second training's models/ and reports/; trained if missing",
    )
    args = parser.parse_args()
    first_seed, second_seed = args.seeds
    ws, params = Workspace.load(args.root)
    trained_seed = load_bundle(ws.model).metadata["train_params"]["seed"]
    if trained_seed != first_seed:
        raise SystemExit(
            f"models/ncf was trained with seed {trained_seed}, not {first_seed}: run `dvc repro` first"
        )
    first = _timed(f"register + gate, seed {first_seed}", lambda: release.register(ws, params))
    print(json.dumps(first, indent=2))
    folder = args.second or f"run/seed-pair/{second_seed}"
    second_ws, second_params = Workspace.load(
        args.root,
        {
            "train.seed": second_seed,
            "paths.model": f"{folder}/models/ncf",
            "paths.reports": f"{folder}/reports",
        },
    )
    if not (second_ws.model / "metadata.json").is_file():
        _timed(
            f"train, seed {second_seed}", lambda: stages.train(second_ws, second_params, show_progress=False)
        )
    if not (second_ws.reports / "metrics.json").is_file():
        # the baselines' report is the same for both seeds (stage baselines does not depend on train)
        shutil.copy(ws.reports / stages.BASELINES_REPORT, second_ws.reports / stages.BASELINES_REPORT)
        _timed(f"evaluate, seed {second_seed}", lambda: stages.evaluate(second_ws, second_params))
    second = _timed(f"register, seed {second_seed}", lambda: release.register_model(second_ws, second_params))
    decision = _timed(
        f"gate, seed {second_seed} against {first_seed}",
        lambda: release.gate_and_promote(ws, params, second["version"], promote=False),
    )
    print(json.dumps(decision, indent=2))
    from pipeline.ops import registry, tracking

    tags = tracking.client(ws.root).get_model_version(registry.MODEL_NAME, second["version"]).tags
    print("readers compared:", tags["gate_readers"])
    for comparison in json.loads(tags["gate_comparisons"]):
        for name in ("ndcg", "coverage", "novelty"):
            got = comparison[name]
            print(
                f"v{second['version']} - v{comparison['reference']} {name}: {got['estimate']:+.5f} "
                f"[{got['low']:+.5f}, {got['high']:+.5f}] ({got['method']}, {got['units']} readers)"
            )


if __name__ == "__main__":
    main()
