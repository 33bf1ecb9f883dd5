"""What the list rules cost: the one ranking path with and without its rules, on the real catalog's
works and authors and random scores, for every test reader's batch shape (K = 50, as the evaluator's
curve). Prints seconds per 1,000 readers.

    python benchmarks/ranking_overhead.py [--root PATH]     (needs data/processed from `dvc repro`)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from pipeline import io
from pipeline.data.catalog import Catalog
from pipeline.ranking import ListRules, Ranker

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--readers", type=int, default=4096)
    args = parser.parse_args()
    catalog = Catalog.from_items(io.read_parquet(args.root / "data" / "processed" / "items.parquet"))
    rng = np.random.default_rng(0)
    rankers = {
        "exclusions only": Ranker(catalog, ListRules(one_per_work=False)),
        "one per work": Ranker(catalog, ListRules(one_per_work=True)),
        "one per work + author cap 4": Ranker(catalog, ListRules(one_per_work=True, max_per_author=4)),
    }
    for k in (10, 50):
        for name, ranker in rankers.items():
            seconds = 0.0
            for _ in range(args.readers // 256):
                scores = rng.normal(size=(256, catalog.n_items)).astype(np.float32)
                started = time.perf_counter()
                ranker.top_k(scores, None, k)
                seconds += time.perf_counter() - started
            print(f"K={k:<3} {name:<30} {1000 * seconds / args.readers:.3f} s per 1,000 readers")


if __name__ == "__main__":
    main()
