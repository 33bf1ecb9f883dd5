"""What adding books costs serving: the trained catalog against the same version grown by N added books.

    python benchmarks/new_books_latency.py [--model models/ncf] [--books 10000] [--requests 3000]

The added books are drawn like the catalog's (an author, a publisher and a year of a random trained
book, a tenth of them with an author the model never saw, a tenth new editions of trained works), and
a few hundred of them rated by known readers so that fold-in and co-reads run. In process, one thread,
both recommenders side by side and interleaved reader by reader (so the machine's drift moves both
alike): p50/p99 of a recommendation drawn from the reader's standing list (what the API serves a
known reader; the first request ranks in full and keeps it), of one ranked in full, and of similar
books; how long growing took, for the N books and for one book (what `PUT /admin/books` waits for:
target 2 s). The target: the served p50 grows by at most 10%.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def added_books(items: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    like = items.iloc[rng.integers(0, len(items), count)].reset_index(drop=True)
    kind = rng.random(count)
    titles = [f"New Arrival {i}" for i in range(count)]
    editions = kind < 0.1
    titles = np.where(editions, like["title"].fillna("") + " (New Edition)", titles)
    authors = np.where(
        (kind >= 0.1) & (kind < 0.2), [f"Debut Author {i}" for i in range(count)], like["author"]
    )
    frame = pd.DataFrame(
        {
            "isbn": [f"979{i:010d}" for i in range(count)],
            "title": titles,
            "author": authors,
            "year": pd.array(rng.integers(1995, 2005, count), dtype="Int16"),
            "publisher": like["publisher"].to_numpy(),
        }
    )
    for size in ("s", "m", "l"):
        frame[f"image_url_{size}"] = pd.NA
    return frame.astype({c: "string" for c in ("isbn", "title", "author", "publisher")})


def percentiles(samples: list[float]) -> str:
    ms = np.asarray(samples) * 1000
    return f"p50 {np.percentile(ms, 50):6.2f} ms   p99 {np.percentile(ms, 99):6.2f} ms   (n={len(ms)})"


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "ncf")
    parser.add_argument("--books", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from pipeline.serving.catalog_growth import Arrivals, grow, learned
    from pipeline.serving.service import BookRecommender

    torch.set_num_threads(1)
    base = BookRecommender.from_folder(args.model)
    base.keep_standing_lists(100, len(base.users))
    books = added_books(base.items, args.books, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    raters = base.users["user_id"].astype(str).to_numpy()[rng.integers(0, len(base.users), 2000)]
    ratings = pd.DataFrame(
        {"user_id": raters, "isbn": books["isbn"].to_numpy()[rng.integers(0, 300, 2000)], "rating": 8}
    )
    started = time.perf_counter()
    learned(base)
    fit_seconds = time.perf_counter() - started
    one = [timed(lambda i=i: grow(base, Arrivals(books.iloc[i : i + 1], ratings.iloc[:0]))) for i in range(5)]
    print(f"one book added (what a PUT /admin/books waits for before it answers): {percentiles(one)}")
    started = time.perf_counter()
    grown = grow(base, Arrivals(books, ratings))
    grow_seconds = time.perf_counter() - started
    print(
        f"catalog {base.bundle.n_items} -> {grown.bundle.n_items} books; fold-in map fitted in {fit_seconds:.1f} s, "
        f"{args.books} books added in {grow_seconds:.1f} s"
    )

    users = (
        base.users["user_id"].sample(args.requests, replace=True, random_state=args.seed).astype(str).tolist()
    )
    full_base = BookRecommender(base.bundle)
    plain_grown = BookRecommender(grown.bundle)  # the same grown catalog, no standing lists
    for user in users:  # every reader's standing list ranked and kept by a first request
        base.recommend([user], 10)
        grown.recommend([user], 10)
    timings: dict[str, list[float]] = {name: [] for name in ("standing", "standing+", "full", "full+")}
    for user in users:
        for name, model in (
            ("standing", base),
            ("standing+", grown),
            ("full", full_base),
            ("full+", plain_grown),
        ):
            timings[name].append(timed(lambda m=model, u=user: m.recommend([u], 10)))
    similar: dict[str, list[float]] = {"similar": [], "similar+": []}
    for isbn in base.items["isbn"].sample(args.requests // 3, replace=True, random_state=2):
        for name, model in (("similar", base), ("similar+", grown)):
            similar[name].append(timed(lambda m=model, i=isbn: m.similar_books([i], 10)))
    timings |= similar
    for name, samples in timings.items():
        print(f"{name:10s} {percentiles(samples)}")
    for name in ("standing", "full", "similar"):
        before, after = np.median(timings[name]), np.median(timings[name + "+"])
        print(f"{name}: p50 +{100 * (after / before - 1):.1f}% with {args.books} books added")


if __name__ == "__main__":
    main()
