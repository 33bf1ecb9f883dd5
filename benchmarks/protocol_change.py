"""Every model's test figures under protocol bx-implicit-v1 (only the known positives excluded, no
list rules) and bx-implicit-v2 (serving's rule: every known book, dislikes and other editions
excluded; one edition per work; the author cap of params.yaml), on the same trained model, in one run.

    python benchmarks/protocol_change.py [--root PATH]     (needs `dvc repro` done in that folder)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import stages
from pipeline.config import Workspace
from pipeline.data.protocol import PROTOCOL
from pipeline.evaluation.baselines import make_baseline
from pipeline.evaluation.evaluate import V1, evaluate
from pipeline.storage.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]
SHOWN = ("ndcg@10", "recall@10", "coverage@10", "diversity@10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args()
    ws, params = Workspace.load(args.root)
    bundle = load_bundle(ws.model)
    figures: dict[str, dict[str, dict[str, float]]] = {}
    for protocol in (V1, PROTOCOL):
        data = stages.evaluation_data(ws, params, "test", protocol=protocol)
        models = {
            "ncf": bundle.recommender(data.train),
            "ncf_without_neighbourhood": bundle.recommender(data.train, neighbourhood=False),
        }
        models |= {
            name: make_baseline(name, **options).fit(data.train)
            for name, options in params.evaluate.baselines().items()
        }
        for name, model in models.items():
            batch = 256 if name.startswith("ncf") else params.evaluate.batch_size
            report = evaluate(model, data, (10,), curve_max_k=10, batch_size=batch)
            figures.setdefault(name, {})[protocol] = {
                f"{key}@10": value for key, value in report.metrics["@10"].items()
            }
        print(
            f"{protocol}: {data.exclude.nnz} excluded pairs, {data.truth.nnz} held-out pairs scored",
            flush=True,
        )
    header = "| model | " + " | ".join(f"{m} v1 | {m} v2" for m in SHOWN) + " | NDCG change |"
    print(header)
    print("|" + "---|" * (2 + 2 * len(SHOWN)))
    for name, by_protocol in figures.items():
        v1, v2 = by_protocol[V1], by_protocol[PROTOCOL]
        cells = " | ".join(f"{v1[m]:.4f} | {v2[m]:.4f}" for m in SHOWN)
        change = (v2["ndcg@10"] - v1["ndcg@10"]) / v1["ndcg@10"] if v1["ndcg@10"] else float("nan")
        print(f"| {name} | {cells} | {change:+.1%} |")


if __name__ == "__main__":
    main()
