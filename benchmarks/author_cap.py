"""The author cap's trade-off on the validation split, for the trained model: NDCG@10, intra-list
diversity and mean books per author in a list, for caps off, 6, 5, 4, 3, 2 and 1. The default of
`serve.max_per_author` is the tightest cap whose NDCG@10 is within 2% (relative) of no cap.

    python benchmarks/author_cap.py [--root PATH] [--users N]     (needs `dvc repro` done there)

Validation only: the model is scored with its train-split history, and nothing of the test split
is read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pipeline import stages
from pipeline.config import Workspace
from pipeline.evaluation.selection import author_cap_tradeoff
from pipeline.storage.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]
MAX_DROP = 0.02


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--users", type=int, default=0, help="validation users to score (0: all)")
    args = parser.parse_args()
    ws, params = Workspace.load(args.root)
    validation = stages.evaluation_data(ws, params, "validation")
    bundle = load_bundle(ws.model)
    model = bundle.recommender(validation.train)
    users = validation.users_with_truth()
    if args.users and args.users < len(users):
        users = np.sort(np.random.default_rng(0).choice(users, args.users, replace=False))
    rows = author_cap_tradeoff(model, validation, users)
    off = rows[0]["ndcg@10"]
    print(f"{len(users)} validation readers, the served model (NCF + neighbourhood term)")
    print("| max_per_author | val NDCG@10 | change | intra-list diversity | books per author |")
    print("|---|---|---|---|---|")
    for row in rows:
        cap = row["max_per_author"] or "off"
        change = (row["ndcg@10"] - off) / off
        print(
            f"| {cap} | {row['ndcg@10']:.4f} | {change:+.2%} | {row['diversity']:.4f} | "
            f"{row['books_per_author']:.3f} |"
        )
    allowed = [
        r["max_per_author"] for r in rows if r["max_per_author"] and r["ndcg@10"] >= off * (1 - MAX_DROP)
    ]
    print(
        f"tightest cap within {MAX_DROP:.0%} of no cap: {min(allowed) if allowed else 'none (keep it off)'}"
    )


if __name__ == "__main__":
    main()
