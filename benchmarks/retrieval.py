"""Two-stage retrieval against full ranking: accuracy on the real test split, latency as the catalog grows.

    python benchmarks/retrieval.py [--root DIR] [--candidates 250,500,1000] [--sizes 35000,350000,3500000]

1. Retention: NDCG@10 of the served model (network + ItemKNN blend) on the test split, full ranking and
   two-stage with each candidate count (forced on at 35k books), through the evaluator (the one ranking
   path, the protocol's exclusions and list rules).
2. Latency: one recommendation in process (`NCFRecommender.recommend`, one reader, K = 10, the list
   rules of serving) at each catalog size: the trained model's item-side terms tiled with Gaussian
   noise (a tenth of each coordinate's spread) up to the size, the neighbourhood matrix padded with
   empty rows, each tile its own works and authors. Full ranking is measured up to `--full-max` books.
   The HNSW index is built with every core (its build time is printed).
"""

from __future__ import annotations

import argparse
import functools
import math
import resource
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from pipeline import stages
from pipeline.config import Workspace
from pipeline.data.catalog import Catalog
from pipeline.evaluation.evaluate import evaluate
from pipeline.model.ncf import ItemCache
from pipeline.model.neighbourhood import Neighbourhood
from pipeline.model.recommender import NCFRecommender
from pipeline.model.retrieval import CandidateIndex, RetrievalSettings
from pipeline.ranking import ListRules, Ranker
from pipeline.storage.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]


def settings_for(params, candidates: int, sample: int = 0) -> RetrievalSettings:
    chosen = {"candidates": candidates} | ({"sample": sample} if sample else {})
    return RetrievalSettings(**(params.serve.retrieval.model_dump() | chosen))


def engine(bundle, history, retrieval: RetrievalSettings | None, two_stage: bool) -> NCFRecommender:
    features = (bundle.user_feature_tensor(), bundle.item_feature_tensor())
    return NCFRecommender(
        bundle.model, *features, history, None, bundle.neighbourhood, retrieval, two_stage=two_stage
    )


def retention(ws, params, bundle, candidate_counts: list[int], sample: int) -> None:
    data = stages.evaluation_data(ws, params, "test")
    settings = params.evaluate
    full = engine(bundle, data.train, None, False)
    started = time.perf_counter()
    base = evaluate(full, data, settings.ks, settings.curve_max_k, batch_size=256).metrics["@10"]
    print(
        f"full ranking: NDCG@10 {base['ndcg']:.4f}, recall@10 {base['recall']:.4f} "
        f"({time.perf_counter() - started:.1f} s, {data.n_items} books)"
    )
    for count in candidate_counts:
        two = engine(bundle, data.train, settings_for(params, count, sample), True).share_item_cache(full)
        started = time.perf_counter()
        two.candidate_index()
        built = time.perf_counter() - started
        started = time.perf_counter()
        got = evaluate(two, data, settings.ks, settings.curve_max_k, batch_size=256).metrics["@10"]
        print(
            f"two-stage, {count} candidates: NDCG@10 {got['ndcg']:.4f} (retention {got['ndcg'] / base['ndcg']:.4f}), "
            f"recall@10 {got['recall']:.4f}; index {built:.1f} s, evaluation {time.perf_counter() - started:.1f} s"
        )


def tiled_cache(cache: ItemCache, size: int, rng: np.random.Generator) -> ItemCache:
    """The item-side terms repeated up to `size` items, each copy but the first moved by noise."""
    n = cache.bias.shape[0]
    reps = math.ceil(size / n)

    def tile(matrix: torch.Tensor) -> torch.Tensor:  # (h, n) -> (h, size)
        spread = matrix.std(dim=1, keepdim=True) * 0.1
        out = matrix.repeat(1, reps)[:, :size].clone()
        for rep in range(1, reps):
            block = out[:, rep * n : (rep + 1) * n]
            block += torch.from_numpy(rng.standard_normal(block.shape, dtype=np.float32)) * spread
        return out.contiguous()

    return ItemCache(tile(cache.gmf_weighted), tile(cache.mlp_first), tile(cache.bias.unsqueeze(0))[0])


def padded(matrix: sp.csr_matrix, size: int, square: bool = False) -> sp.csr_matrix:
    matrix = matrix.tocsr()
    rows = size if square else matrix.shape[0]
    indptr = np.concatenate([matrix.indptr, np.full(rows - matrix.shape[0], matrix.indptr[-1])])
    return sp.csr_matrix((matrix.data, matrix.indices, indptr), shape=(rows, size))


def latency(recommender: NCFRecommender, ranker: Ranker, readers: np.ndarray) -> tuple[float, float]:
    recommender.recommend(readers[:1], k=10, ranker=ranker)  # warm up
    times = []
    for reader in readers:
        started = time.perf_counter()
        recommender.recommend(np.array([reader]), k=10, ranker=ranker)
        times.append(time.perf_counter() - started)
    return float(np.percentile(times, 50) * 1000), float(np.percentile(times, 99) * 1000)


def scaling(
    ws, params, bundle, sizes: list[int], candidates: int, sample: int, full_max: int, n_readers: int
) -> None:
    rng = np.random.default_rng(0)
    history = bundle.matrix(("train",))
    exclusion = bundle.exclusion(("train", "validation", "dislike"))
    readers = rng.choice(np.flatnonzero(np.diff(history.indptr) > 0), n_readers, replace=False)
    base_cache = engine(bundle, history, None, False).item_cache()
    n0 = base_cache.bias.shape[0]
    rules = ListRules(one_per_work=True, max_per_author=params.serve.max_per_author)
    print(f"{'books':>10}{'path':>12}{'p50 ms':>9}{'p99 ms':>9}{'build s':>9}{'RSS GiB':>9}")
    for size in sizes:
        cache = base_cache if size == n0 else tiled_cache(base_cache, size, rng)
        reps = math.ceil(size / n0)
        offsets = np.repeat(np.arange(reps), n0)[:size]
        works, authors = (
            np.tile(bundle.catalog.work, reps)[:size],
            np.tile(bundle.catalog.author, reps)[:size],
        )
        catalog = Catalog(
            works + offsets * (works.max() + 1),
            np.where(authors >= 0, authors + offsets * (authors.max() + 1), -1),
        )
        ranker = Ranker(catalog, rules)
        neighbourhood = Neighbourhood(
            padded(bundle.neighbourhood.similarity, size, square=True), bundle.neighbourhood.weight
        )
        hist, seen = padded(history, size), padded(exclusion, size)
        make = functools.partial(
            engine_at, bundle, hist, seen, neighbourhood, settings_for(params, candidates, sample)
        )
        if size <= full_max:
            full = make(False)
            full._cache = cache
            p50, p99 = latency(full, ranker, readers)
            print(f"{size:>10}{'full':>12}{p50:>9.2f}{p99:>9.2f}{'':>9}{rss():>9.1f}")
        two = make(True)
        started = time.perf_counter()
        two._index = CandidateIndex(cache, two.retrieval, threads=-1)
        built = time.perf_counter() - started
        del cache
        p50, p99 = latency(two, ranker, readers)
        print(f"{size:>10}{'two-stage':>12}{p50:>9.2f}{p99:>9.2f}{built:>9.1f}{rss():>9.1f}")
        del two


def engine_at(bundle, history, seen, neighbourhood, settings, two_stage: bool) -> NCFRecommender:
    features = (bundle.user_feature_tensor(), bundle.item_feature_tensor())
    return NCFRecommender(bundle.model, *features, history, seen, neighbourhood, settings, two_stage)


def rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument(
        "--candidates", default="250,500,1000", help="candidate counts for the retention table"
    )
    parser.add_argument("--sizes", default="35469,350000,3500000", help="catalog sizes for the latency table")
    parser.add_argument("--latency-candidates", type=int, default=0, help="0: serve.retrieval.candidates")
    parser.add_argument("--full-max", type=int, default=350_000, help="measure full ranking up to this size")
    parser.add_argument("--readers", type=int, default=300)
    parser.add_argument("--sample", type=int, default=0, help="0: serve.retrieval.sample")
    parser.add_argument("--skip-retention", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one request, one core: as one API worker serves it
    ws, params = Workspace.load(args.root)
    bundle = load_bundle(ws.model)
    if not args.skip_retention:
        retention(ws, params, bundle, [int(c) for c in args.candidates.split(",")], args.sample)
    if not args.skip_latency:
        candidates = args.latency_candidates or params.serve.retrieval.candidates
        scaling(
            ws,
            params,
            bundle,
            [int(s) for s in args.sizes.split(",")],
            candidates,
            args.sample,
            args.full_max,
            args.readers,
        )
    print(f"peak RSS {rss():.1f} GiB")


if __name__ == "__main__":
    main()
