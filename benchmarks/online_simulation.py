"""Does online click-through order two models as offline NDCG does? The replay simulator on real data,
production against a deliberately weaker challenger, in one run.

    python benchmarks/online_simulation.py [--root PATH] [--requests 4000] [--seconds 900]
    (needs `dvc repro` done in that folder)

Registers the workspace's model as production if the registry has none, trains a weaker challenger
(one epoch, network alone) into reports/benchmark-online/, evaluates and registers it as `challenger`
(never promoted), then runs `bookrec simulate --mode ab` (its own loopback API over a scratch store)
and prints each arm's offline NDCG@10 beside its online click-through with the 95% interval.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from pipeline import release, stages
from pipeline.config import Workspace
from pipeline.ops import registry, tracking

ROOT = Path(__file__).resolve().parents[1]


def weaker_challenger(ws: Workspace, params) -> str:
    folder = Path("reports") / "benchmark-online" / "weak"
    weak_ws = Workspace(
        ws.root, ws.paths.model_copy(update={"model": str(folder / "model"), "reports": str(folder)})
    )
    train = params.train.model_copy(
        update={
            "epochs": 1,
            "neighbourhood": params.train.neighbourhood.model_copy(update={"weights": (0.0,)}),
        }
    )
    weak = params.model_copy(update={"train": train})
    stages.train(weak_ws, weak, show_progress=False)
    stages.evaluate(weak_ws, weak)
    return release.register_model(weak_ws, weak)["version"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--seconds", type=float, default=900)
    args = parser.parse_args()
    ws, params = Workspace.load(args.root)
    client = tracking.client(ws.root)
    if registry.production_version(client) is None:
        print("registering the workspace's model:", release.register(ws, params), flush=True)
    production = str(registry.production_version(client).version)
    challenger = weaker_challenger(ws, params)
    print(f"production v{production}, weaker challenger v{challenger}", flush=True)
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "bookrec"),
            "simulate",
            "--requests",
            str(args.requests),
            "--seconds",
            str(args.seconds),
            "--mode",
            "ab",
            "--share",
            "0.5",
        ],
        cwd=ws.root,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout)
    print(f"{result['requests']} requests in {result['seconds']} s")
    print("| arm | version | offline NDCG@10 (test) | lists | online CTR@10 [95% CI] | attributed CTR |")
    print("|---|---|---|---|---|---|")
    attributed = {row["arm"]: row for row in result["attributed"]}
    for arm, tally in result["arms"].items():
        version = tally["versions"][0]
        ndcg = client.get_model_version(registry.MODEL_NAME, version).tags.get(registry.metric_tag("ndcg@10"))
        print(
            f"| {arm} | {version} | {float(ndcg):.4f} | {tally['lists']} | {tally['ctr']:.4f} "
            f"[{tally['ctr_low']:.4f}, {tally['ctr_high']:.4f}] | {attributed[arm]['ctr']:.4f} |"
        )
    c = result["comparison"]
    print(
        f"challenger - production click-through: {c['difference']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"
    )


if __name__ == "__main__":
    main()
