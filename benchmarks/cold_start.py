"""Cold start on the real data: books that arrive after training, served as bookrec serves added books.

    python benchmarks/cold_start.py [--root .] [--share 0.05] [--seed 0] [--set train.epochs=N ...]

A seeded `share` of the catalog's books, and every interaction with them, is held out of a training
run (the public training API: `build_model`, `fit`, the neighbourhood term chosen on validation, as
stage train does), as if they arrived afterwards. They are then added to that model exactly as the
serving store's books are (`pipeline.serving.catalog_growth.grow`): side-feature vectors, and the fold-in
of the first 1, 3 and 10 of their ratings (taken, in a seeded order, from the train part of their
interactions; the readers who gave them have them in their history). The readers with test
interactions on held-out books are ranked, under the serving rules and the protocol's exclusions,
over the held-out books alone (the "new arrivals" shelf) and over the whole catalog with them added;
the truth is their test interactions on held-out books. Against: the production model of this
workspace (`models/ncf`, trained with the same params on every book: the same books' figures when
trained on), popularity within the author (a new book is as popular as its author's trained books
are on average) and random. Writes reports/cold_start.json and reports/cold_start.png.

A benchmark rather than a DVC stage: it needs a training run of its own on a copy of the data with
books held out (as long as stage train), which a `dvc repro` after every change of the data or the
model's params should not pay for; it is run when the growth code or the model changes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import io  # noqa: E402
from pipeline.config import Workspace  # noqa: E402
from pipeline.data.catalog import Catalog  # noqa: E402
from pipeline.data.features import build_features  # noqa: E402
from pipeline.evaluation import metrics  # noqa: E402
from pipeline.evaluation.evaluate import EvaluationData, interaction_matrix, ndcg_at  # noqa: E402
from pipeline.evaluation.selection import choose_neighbourhood  # noqa: E402
from pipeline.model.recommender import NCFRecommender  # noqa: E402
from pipeline.model.train import build_model, fit, training_data  # noqa: E402
from pipeline.ranking import ListRules, Ranker  # noqa: E402
from pipeline.serving.catalog_growth import Arrivals, grow, learned  # noqa: E402
from pipeline.serving.service import BookRecommender  # noqa: E402
from pipeline.storage.bundle import Bundle, load_bundle, save_bundle  # noqa: E402

FOLD_INS = (1, 3, 10)
BOOK_COLUMNS = ["isbn", "title", "author", "year", "publisher", "image_url_s", "image_url_m", "image_url_l"]
BATCH = 256


def held_out_books(n_items: int, share: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_items, int(round(share * n_items)), replace=False))


def cold_copy(
    tables: dict[str, pd.DataFrame], held: np.ndarray
) -> tuple[dict[str, pd.DataFrame], np.ndarray]:
    """The processed tables without the held-out books (item indices renumbered); old -> new index."""
    items = tables["items"]
    kept = np.ones(len(items), dtype=bool)
    kept[held] = False
    renumber = np.full(len(items), -1, dtype=np.int64)
    renumber[kept] = np.arange(int(kept.sum()))
    cold = {"users": tables["users"], "items": items[kept].assign(item_idx=renumber[kept].astype(np.int32))}
    for name in ("train", "validation", "test", "dislikes"):
        frame = tables[name][kept[tables[name]["item_idx"].to_numpy()]]
        cold[name] = frame.assign(item_idx=renumber[frame["item_idx"].to_numpy()].astype(np.int32))
    cold["items"] = cold["items"].reset_index(drop=True)
    return cold, renumber


def train_cold_model(cold: dict[str, pd.DataFrame], params, folder: Path, key: str) -> tuple[Bundle, dict]:
    """Stage train's recipe on the cold copy, through the public training API; the bundle in memory."""
    rules = ListRules(one_per_work=True, max_per_author=params.serve.max_per_author)
    splits = {name: cold[name] for name in ("train", "validation", "test")}
    n_users = len(cold["users"])
    validation = EvaluationData.build(
        splits, cold["items"], n_users, "validation", dislikes=cold["dislikes"], rules=rules, processes=1
    )
    vocabulary, user_features, item_features = build_features(cold["users"], cold["items"], params.features)
    data = training_data(validation.train, user_features, item_features, vocabulary)
    users = validation.users_with_truth()
    wanted = params.train.early_stopping_users
    if wanted and wanted < len(users):
        users = np.sort(np.random.default_rng(params.train.seed).choice(users, wanted, replace=False))

    def network(model) -> NCFRecommender:
        return NCFRecommender(model, data.user_features, data.item_features, validation.train)

    model = build_model(data, params.train)
    started = time.perf_counter()
    history = fit(model, data, params.train, lambda m: ndcg_at(network(m), validation, users, batch_size=512))
    neighbourhood, _ = choose_neighbourhood(network(model), validation, users, params.train.neighbourhood)
    seconds = time.perf_counter() - started
    ids = {
        key: encoded.add_suffix("_id").rename(columns={f"{key}_id": key})
        for key, encoded in (("user_idx", user_features), ("item_idx", item_features))
    }
    summary = {
        "best_epoch": history.best_epoch,
        "validation_ndcg_at_10": history.best_validation_ndcg,
        "neighbourhood_weight": 0.0 if neighbourhood is None else neighbourhood.weight,
        "seconds": round(seconds, 1),
    }
    metadata = {
        "min_explicit_rating": params.preprocess.min_explicit_rating,
        "max_per_author": params.serve.max_per_author,
        "age_range": [params.ingest.min_age, params.ingest.max_age],
        "ann_threshold": params.serve.ann_threshold,
        "retrieval": params.serve.retrieval.model_dump(),
        "train_params": params.train.model_dump(mode="json"),
        "cold_start": key,
        "cold_training": summary,
    }
    save_bundle(
        folder,
        model,
        cold["users"].merge(ids["user_idx"], on="user_idx").sort_values("user_idx", ignore_index=True),
        cold["items"].merge(ids["item_idx"], on="item_idx").sort_values("item_idx", ignore_index=True),
        {**splits, "dislike": cold["dislikes"]},
        vocabulary,
        history.as_dict(),
        metadata,
        neighbourhood,
    )
    return load_bundle(folder), summary


def cold_model(cold: dict[str, pd.DataFrame], params, folder: Path, key: str) -> tuple[Bundle, dict]:
    """The cold model saved in `folder` by an earlier run with the same held-out books and params, or
    a new one trained (and saved there: a rerun of the evaluation does not train again)."""
    if (folder / "metadata.json").is_file() and io.read_json(folder / "metadata.json").get(
        "cold_start"
    ) == key:
        bundle = load_bundle(folder)
        return bundle, bundle.metadata["cold_training"] | {"reused": str(folder)}
    return train_cold_model(cold, params, folder, key)


def first_ratings(train: pd.DataFrame, held: np.ndarray, users: pd.DataFrame, items: pd.DataFrame, seed: int):
    """Each held-out book's train interactions in a seeded order (its first ratings): user_id, isbn, rating."""
    frame = train[np.isin(train["item_idx"].to_numpy(), held)]
    order = np.random.default_rng(seed).permutation(len(frame))
    frame = frame.iloc[order].assign(position=lambda f: f.groupby("item_idx").cumcount())
    return pd.DataFrame(
        {
            "user_id": users["user_id"].to_numpy()[frame["user_idx"].to_numpy()].astype(str),
            "isbn": items["isbn"].to_numpy()[frame["item_idx"].to_numpy()].astype(str),
            "rating": frame["rating"].to_numpy(),
            "position": frame["position"].to_numpy(),
        }
    )


class Shelves:
    """The readers with test interactions on held-out books, their exclusions and truth, in the full
    catalog's item indices; ranks (B, n_items) scores on the shelf of new arrivals and on the whole."""

    def __init__(self, tables: dict[str, pd.DataFrame], held: np.ndarray, rules: ListRules):
        n_users, n_items = len(tables["users"]), len(tables["items"])
        self.held, self.n_items = held, n_items
        self.catalog = Catalog.from_items(tables["items"])
        known = pd.concat([tables[name] for name in ("train", "validation", "dislikes")])
        self.exclude = self.catalog.with_editions(interaction_matrix(known, n_users, n_items))
        test = tables["test"][np.isin(tables["test"]["item_idx"].to_numpy(), held)]
        truth = interaction_matrix(test, n_users, n_items)
        truth = (truth - truth.multiply(self.exclude)).tocsr()
        truth.eliminate_zeros()
        self.readers = np.flatnonzero(np.diff(truth.indptr) > 0)
        self.truth = truth[self.readers]
        self.rules = rules
        self.shelf_catalog = Catalog(self.catalog.work[held], self.catalog.author[held])

    def rank(self, scores: np.ndarray, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Top 10 of a batch (positions into `readers`) on each shelf, as full-catalog item indices."""
        excluded = self.exclude[self.readers[batch]]
        shelf_scores = np.ascontiguousarray(scores[:, self.held])
        shelf_excluded = excluded[:, self.held]
        shelf, _ = Ranker(self.shelf_catalog, self.rules).top_k(shelf_scores, shelf_excluded, 10)
        whole, _ = Ranker(self.catalog, self.rules).top_k(np.ascontiguousarray(scores), excluded, 10)
        return {
            "new_arrivals": np.where(shelf >= 0, self.held[shelf.clip(min=0)], -1),
            "whole_catalog": whole,
        }

    def measure(self, score_batch) -> dict[str, dict[str, float]]:
        """NDCG@10 and Recall@10 of `score_batch(positions) -> (B, n_items)` scores on both shelves."""
        tops: dict[str, list[np.ndarray]] = {"new_arrivals": [], "whole_catalog": []}
        for start in range(0, len(self.readers), BATCH):
            batch = np.arange(start, min(start + BATCH, len(self.readers)))
            for shelf, top in self.rank(np.asarray(score_batch(batch), dtype=np.float32), batch).items():
                tops[shelf].append(top)
        result = {}
        for shelf, parts in tops.items():
            figures = metrics.accuracy(np.concatenate(parts), self.truth, 10)
            result[shelf] = {
                "ndcg_at_10": round(figures["ndcg"], 5),
                "recall_at_10": round(figures["recall"], 5),
            }
        return result


def grown_scores(grown: BookRecommender, shelves: Shelves, to_grown: np.ndarray, folded: pd.DataFrame):
    """Scores (in full-catalog item order) of the cold model grown by the held-out books: each reader's
    history is their cold train history plus the held-out books among the ratings folded in."""
    engine = grown.engines["train"]
    n_grown = grown.bundle.n_items
    own = folded.assign(
        user_idx=folded["user_id"].map(grown.user_index), item=folded["isbn"].map(grown.item_index)
    )
    extra = sp.csr_matrix(
        (np.ones(len(own), np.float32), (own["user_idx"], own["item"])),
        shape=(grown.bundle.n_users + 1, n_grown),
    )

    def scores(batch: np.ndarray) -> np.ndarray:
        rows = shelves.readers[batch]
        history = engine.history[rows] + extra[rows]
        history.data[:] = 1.0
        with torch.inference_mode():
            grown_order = engine.score_rows(rows, engine.user_features[torch.as_tensor(rows)], history)
        return grown_order[:, to_grown]

    return scores


def author_popularity_scores(cold_train: sp.csr_matrix, items: pd.DataFrame, held: np.ndarray, renumber):
    """Popularity within the author: a trained book its training popularity, a held-out book the mean
    popularity of its author's trained books (0 for an author with none)."""
    trained = np.flatnonzero(renumber >= 0)
    popularity = np.zeros(len(items))
    popularity[trained] = np.bincount(cold_train.indices, minlength=cold_train.shape[1])[renumber[trained]]
    authors = items["author_idx"].to_numpy()
    by_author = pd.Series(popularity[trained]).groupby(authors[trained]).mean()
    known_author = authors[held] >= 0
    popularity[held] = np.where(known_author, pd.Series(authors[held]).map(by_author).fillna(0).to_numpy(), 0)
    return popularity.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--share", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="a params override for the cold training, e.g. train.epochs=1",
    )
    args = parser.parse_args()
    overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
    ws, params = Workspace.load(args.root, overrides)
    tables = {
        name: io.read_parquet(ws.processed / f"{name}.parquet") for name in ("train", "validation", "test")
    }
    for name in ("users", "items", "dislikes"):
        tables[name] = io.read_parquet(ws.processed / f"{name}.parquet")
    tables["users"] = tables["users"].sort_values("user_idx", ignore_index=True)
    tables["items"] = tables["items"].sort_values("item_idx", ignore_index=True)
    held = held_out_books(len(tables["items"]), args.share, args.seed)
    cold, renumber = cold_copy(tables, held)
    rules = ListRules(one_per_work=True, max_per_author=params.serve.max_per_author)
    shelves = Shelves(tables, held, rules)
    print(f"{len(held)} books held out; {len(shelves.readers)} readers with test interactions on them")

    key = json.dumps(
        {
            "share": args.share,
            "seed": args.seed,
            "train": params.train.model_dump(mode="json"),
            "data": io.read_json(ws.processed / "protocol_report.json"),
        },
        sort_keys=True,
    )
    bundle, training = cold_model(cold, params, ws.root / "models" / "cold_start", key)
    print(f"cold model trained: {training}")
    base = BookRecommender(bundle)
    started = time.perf_counter()
    fold_in = learned(base).fold_in
    fit_seconds = time.perf_counter() - started
    books = tables["items"].iloc[held][BOOK_COLUMNS].reset_index(drop=True)
    ratings = first_ratings(tables["train"], held, tables["users"], tables["items"], args.seed)
    results: dict[str, dict] = {}
    for count in (0, *FOLD_INS):
        folded = ratings[ratings["position"] < count][["user_id", "isbn", "rating"]]
        started = time.perf_counter()
        grown = grow(base, Arrivals(books, folded))
        seconds = time.perf_counter() - started
        to_grown = np.where(renumber >= 0, renumber, 0)
        to_grown[held] = grown.item_indices(books["isbn"])
        name = "side_features" if count == 0 else f"fold_in_{count}"
        results[name] = shelves.measure(grown_scores(grown, shelves, to_grown, folded)) | {
            "grow_seconds": round(seconds, 2),
            "ratings_folded_in": len(folded),
        }
        print(name, results[name])

    if (ws.model / "weights.safetensors").is_file():
        trained_on = load_bundle(ws.model)
        full_train = interaction_matrix(tables["train"], len(tables["users"]), len(tables["items"]))
        reference = trained_on.recommender(full_train)
        results["trained_on"] = shelves.measure(lambda batch: reference.score_users(shelves.readers[batch]))
    else:
        print(f"no trained model in {ws.model} (run `dvc repro train`): no figures when trained on")
    cold_train = interaction_matrix(cold["train"], len(cold["users"]), len(cold["items"]))
    popularity = author_popularity_scores(cold_train, tables["items"], held, renumber)
    results["popularity_within_author"] = shelves.measure(
        lambda batch: np.broadcast_to(popularity, (len(batch), len(popularity))).copy()
    )
    rng = np.random.default_rng(args.seed)
    results["random"] = shelves.measure(lambda batch: rng.random((len(batch), len(tables["items"]))))
    for name in ("trained_on", "popularity_within_author", "random"):
        print(name, results.get(name))

    report = {
        "protocol": "cold-start-v1: a seeded share of books and every interaction with them held out of training",
        "share_held_out": args.share,
        "seed": args.seed,
        "books_held_out": len(held),
        "of_which_new_editions_of_a_trained_work": int(
            np.isin(tables["items"]["work_idx"].to_numpy()[held], cold["items"]["work_idx"].to_numpy()).sum()
        ),
        "readers": len(shelves.readers),
        "truth_interactions": int(shelves.truth.nnz),
        "cold_training": training,
        "fold_in_map": {
            "ridge": fold_in.ridge,
            "held_out_r2": round(fold_in.holdout_r2, 4),
            "fit_seconds": round(fit_seconds, 2),
        },
        "results": results,
        "targets": targets(results),
    }
    io.write_json(report, ws.reports / "cold_start.json")
    plot(results, ws.reports / "cold_start.png")
    print(json.dumps(report["targets"], indent=2))


def targets(results: dict) -> dict:
    shelf = "new_arrivals"
    side, three = (results[n][shelf]["ndcg_at_10"] for n in ("side_features", "fold_in_3"))
    beat = side > results["popularity_within_author"][shelf]["ndcg_at_10"]
    if "trained_on" not in results:
        return {"side_features_beat_popularity_within_author_on_new_arrivals": beat}
    gap = results["trained_on"][shelf]["ndcg_at_10"] - side
    return {
        "side_features_beat_popularity_within_author_on_new_arrivals": beat,
        "gap_to_trained_on_new_arrivals_ndcg": round(gap, 5),
        "gap_closed_by_3_ratings": round((three - side) / gap, 3) if gap > 0 else None,
        "three_ratings_halve_the_gap": bool(gap <= 0 or three - side >= gap / 2),
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, shelf in zip(axes, ("new_arrivals", "whole_catalog"), strict=True):
        values = [results[n][shelf]["ndcg_at_10"] for n in names]
        colours = {"trained_on": "#55a868", "popularity_within_author": "#c44e52", "random": "#8c8c8c"}
        axis.bar(range(len(names)), values, color=[colours.get(n, "#4c72b0") for n in names])
        axis.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
        axis.set_title(f"NDCG@10, {shelf.replace('_', ' ')}")
    figure.suptitle("Books that arrived after training (5% of the catalog held out)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
