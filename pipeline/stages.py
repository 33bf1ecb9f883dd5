"""One function per DVC stage: read with `io`, call the pure core, write with `io`, return a summary.

Each stage writes its whole output folder through `atomic_directory`, so a failing stage leaves the
previous outputs exactly as they were.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pandas as pd

from pipeline import io
from pipeline.config import Params, Workspace
from pipeline.data.features import build_features
from pipeline.data.protocol import PROTOCOL

if TYPE_CHECKING:
    from pipeline.evaluation.evaluate import EvaluationData

from pipeline.schemas import (
    ITEM_FEATURES,
    USER_FEATURES,
)

BASELINES_REPORT = "baselines.json"  # below paths.reports: every baseline's full report, for stage evaluate
BASELINES_SKIPPED = "baselines_skipped.json"  # below paths.reports: baseline -> why it was out of reach


def ingest(ws: Workspace, params: Params) -> dict:
    from pipeline.storage.feedback import BOOKS_FILE, FEEDBACK_FILE
    from pipeline.storage.interim import ingest_files
    from pipeline.storage.rawdata import locate_raw, verify_raw

    verify_raw(ws.raw)
    feedback_file, books_file = ws.feedback / FEEDBACK_FILE, ws.feedback / BOOKS_FILE
    with io.atomic_directory(ws.interim) as out:
        report = ingest_files(
            locate_raw(ws.raw),
            feedback_file if feedback_file.is_file() else None,
            out,
            params.ingest,
            params.engine,
            books_file if books_file.is_file() else None,
        )
        for role, table in report.items():
            if table["rows_read"] != table["rows_written"] + table["rows_rejected"]:
                raise AssertionError(f"ingest lost rows of {role}: {table}")
        io.write_json(report, out / "ingest_report.json")
    return report


def preprocess(ws: Workspace, params: Params) -> dict:
    from pipeline.storage.processed import preprocess_files

    with io.atomic_directory(ws.processed) as out:
        return preprocess_files(ws.interim, out, params.preprocess, params.engine)


def features(ws: Workspace, params: Params) -> dict:
    users = io.read_parquet(ws.processed / "users.parquet")
    items = io.read_parquet(ws.processed / "items.parquet")
    vocabulary, user_features, item_features = build_features(users, items, params.features)
    spec = vocabulary.spec()
    with io.atomic_directory(ws.features) as out:
        io.write_parquet(USER_FEATURES.validate(user_features), out / "user_features.parquet")
        io.write_parquet(ITEM_FEATURES.validate(item_features), out / "item_features.parquet")
        io.write_json(vocabulary.to_json(), out / "vocabulary.json")
        io.write_json(spec, out / "feature_spec.json")
    return spec


def load_splits(ws: Workspace) -> dict[str, pd.DataFrame]:
    return {
        name: io.read_parquet(ws.processed / f"{name}.parquet") for name in ("train", "validation", "test")
    }


def user_cohorts(ws: Workspace, top_countries: int) -> pd.DataFrame:
    """Per user: age bucket and country labels (the top countries by name, the rest <other>)."""
    from pipeline.data.features import OTHER, FeatureVocabulary

    vocabulary = FeatureVocabulary.from_json(io.read_json(ws.features / "vocabulary.json"))
    encoded = io.read_parquet(ws.features / "user_features.parquet").set_index("user_idx").sort_index()
    ages = pd.Series(vocabulary.values["age_bucket"])[encoded["age_bucket"]].to_numpy()
    countries = pd.Series(vocabulary.values["country"])[encoded["country"]]
    named = set(vocabulary.values["country"][2 : 2 + top_countries])
    countries = countries.where(countries.isin(named) | countries.str.startswith("<"), OTHER).to_numpy()
    return pd.DataFrame({"age_bucket": ages, "country": countries}, index=encoded.index)


def evaluation_data(
    ws: Workspace, params: Params, target: str, cohorts: pd.DataFrame | None = None, protocol: str = PROTOCOL
) -> EvaluationData:
    """The protocol's `EvaluationData` for `target` from the processed tables: exclusions, truth and
    the one ranking path with the serving rules of params.yaml."""
    from pipeline.evaluation.evaluate import EvaluationData
    from pipeline.ranking import ListRules

    users = io.read_parquet(ws.processed / "users.parquet", columns=["user_idx"])
    return EvaluationData.build(
        load_splits(ws),
        io.read_parquet(ws.processed / "items.parquet"),
        len(users),
        target,
        cohorts,
        dislikes=io.read_parquet(ws.processed / "dislikes.parquet"),
        rules=ListRules(one_per_work=True, max_per_author=params.serve.max_per_author),
        protocol=protocol,
        processes=params.evaluate.processes or len(os.sched_getaffinity(0)),
        max_readers=params.evaluate.max_readers,
        readers_seed=params.evaluate.readers_seed,
        max_scored_pairs=params.evaluate.max_scored_pairs,
    )


def run_name(params: Params, feature_hash: str, when: datetime | None = None) -> str:
    """Date, key hyperparameters and feature set, e.g. 2026-11-28_ncf-g128-m32x64-lr0.002-n8_f1fd0b3."""
    t = params.train
    layers = "x".join(str(size) for size in t.mlp_layers)
    flags = (
        ("" if t.use_history else "-nohist")
        + ("" if t.use_side_features else "-noside")
        + ("-knn" if any(t.neighbourhood.weights) else "")
    )
    stamp = (when or datetime.now(UTC)).strftime("%Y-%m-%d")
    return (
        f"{stamp}_ncf-g{t.gmf_dim}-m{t.mlp_dim}x{layers}-lr{t.lr:g}-n{t.negatives}{flags}_f{feature_hash[:7]}"
    )


def _early_stopping_users(validation, params: Params):
    """The validation users that choose the best epoch and the neighbourhood weight: a seeded sample of
    `train.early_stopping_users`, no more than `evaluate.max_scored_pairs` readers x books. A split
    without validation readers is an error here, before any training."""
    import numpy as np

    from pipeline.evaluation.evaluate import readers_cap

    users = validation.users_with_truth()
    if not len(users):
        raise ValueError(
            "the validation split has no reader with held-out books: training could not choose an epoch "
            "(check preprocess.validation_fraction and the data)"
        )
    wanted = readers_cap(
        validation.n_items, params.train.early_stopping_users, params.evaluate.max_scored_pairs
    )
    if wanted and wanted < len(users):
        users = np.sort(np.random.default_rng(params.train.seed).choice(users, wanted, replace=False))
    return users


def _feature_tables(ws: Workspace) -> tuple:
    from pipeline.data.features import FeatureVocabulary

    vocabulary = FeatureVocabulary.from_json(io.read_json(ws.features / "vocabulary.json"))
    return (
        vocabulary,
        io.read_parquet(ws.features / "user_features.parquet"),
        io.read_parquet(ws.features / "item_features.parquet"),
    )


def _with_feature_ids(table: pd.DataFrame, encoded: pd.DataFrame, key: str) -> pd.DataFrame:
    """An id map joined with its feature ids (columns `<feature>_id`), ordered by `key`."""
    ids = encoded.add_suffix("_id").rename(columns={f"{key}_id": key})
    return table.merge(ids, on=key, validate="one_to_one").sort_values(key)


def train(ws: Workspace, params: Params, show_progress: bool = True) -> dict:
    """Stage train: fit NCF on train, early-stop on validation, choose the neighbourhood term, save
    models/ncf and the training curve.

    Under torchrun with several processes (`torchrun --nproc-per-node P --no-python bookrec train`)
    every rank trains its shard of each batch (pipeline/model/distributed.py); rank 0 alone validates,
    chooses the neighbourhood term and writes, the other ranks return a one-line summary."""
    from pipeline.evaluation.evaluate import ndcg_at
    from pipeline.evaluation.selection import choose_neighbourhood
    from pipeline.model import distributed
    from pipeline.model.recommender import NCFRecommender
    from pipeline.model.train import build_model, fit, training_data
    from pipeline.ops import progress

    validation = evaluation_data(ws, params, "validation")
    vocabulary, user_features, item_features = _feature_tables(ws)
    data = training_data(validation.train, user_features, item_features, vocabulary)
    check_users = _early_stopping_users(validation, params)

    def network(model) -> NCFRecommender:
        return NCFRecommender(model, data.user_features, data.item_features, validation.train)

    with distributed.process_group():
        rank, world = distributed.rank(), distributed.world_size()
        model = build_model(data, params.train)
        history = fit(
            model,
            data,
            params.train,
            lambda candidate: ndcg_at(
                network(candidate), validation, check_users, batch_size=params.evaluate.batch_size
            ),
            show_progress=show_progress,
            on_epoch=lambda row: progress.report(task="train", epochs=params.train.epochs, **row),
        )
    if rank != 0:
        return {"rank": rank, "processes": world, "epochs_run": len(history.epochs), "writes": "rank 0"}
    started = time.perf_counter()
    neighbourhood, by_weight = choose_neighbourhood(
        network(model), validation, check_users, params.train.neighbourhood
    )
    neighbourhood_seconds = time.perf_counter() - started
    spec = vocabulary.spec()
    name = run_name(params, spec["hash"])
    weight = neighbourhood.weight if neighbourhood else 0.0
    metadata = {
        "run_name": name,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "protocol": PROTOCOL,
        "feature_hash": spec["hash"],
        "age_range": [params.ingest.min_age, params.ingest.max_age],
        "min_explicit_rating": params.preprocess.min_explicit_rating,
        "ann_threshold": params.serve.ann_threshold,
        "retrieval": params.serve.retrieval.model_dump(),
        "max_per_author": params.serve.max_per_author,
        "train_params": params.train.model_dump(mode="json"),
        "best_epoch": history.best_epoch,
        "best_validation_ndcg_at_10": history.best_validation_ndcg,
        "neighbourhood_weight": weight,
        "validation_ndcg_at_10_by_neighbourhood_weight": {str(w): v for w, v in by_weight.items()},
    }
    _save_model(ws, model, vocabulary, (user_features, item_features), history, metadata, neighbourhood)
    summary = {
        "best_epoch": history.best_epoch,
        "val_ndcg_at_10": round(history.best_validation_ndcg, 6),
        "neighbourhood_weight": weight,
        "val_ndcg_at_10_with_neighbourhood": round(
            max(by_weight.values(), default=history.best_validation_ndcg), 6
        ),
        "epochs_run": len(history.epochs),
        "seconds_to_best": round(history.seconds_to_best, 1),
        "seconds_total": round(history.seconds_total, 1),
        "negative_collision_rate": round(history.sampler_collision_rate, 6),
        "reader_chunk": history.reader_chunk,
        "seconds_neighbourhood": round(neighbourhood_seconds, 1),
        "processes": world,
    }
    io.write_json(summary, ws.reports / "train_metrics.json")
    with io.atomic_path(ws.reports / "train_curve.csv") as tmp:
        pd.DataFrame(history.epochs).to_csv(tmp, index=False)
    return summary | {"run_name": name, "stopped_because": history.stopped_because}


def _save_model(
    ws: Workspace, model, vocabulary, encoded: tuple, history, metadata: dict, neighbourhood
) -> None:
    """models/ncf, written whole or not at all: weights, id maps with feature ids, every known
    interaction (splits and dislikes), vocabulary, history and metadata."""
    from pipeline.storage.bundle import save_bundle

    user_features, item_features = encoded
    users = _with_feature_ids(io.read_parquet(ws.processed / "users.parquet"), user_features, "user_idx")
    items = _with_feature_ids(io.read_parquet(ws.processed / "items.parquet"), item_features, "item_idx")
    known = load_splits(ws) | {"dislike": io.read_parquet(ws.processed / "dislikes.parquet")}
    with io.atomic_directory(ws.model) as out:
        save_bundle(out, model, users, items, known, vocabulary, history.as_dict(), metadata, neighbourhood)


# What the gate compares a model with (popularity's NDCG@10 on the same split), and random's floor:
# seconds to evaluate, so that the first run promotes a model without waiting for the other baselines.
REFERENCE_BASELINES = ("random", "popularity")


def baselines(ws: Workspace, params: Params, only: tuple[str, ...] | None = None) -> dict:
    """Stage baselines: every baseline fitted on train and ranked over the full catalog on the test
    split; the tuned ones (ItemKNN BM25, RP3beta, EASE) first choose their values on validation, and a
    baseline that the catalog puts out of reach is skipped, saying why (baselines_skipped.json). Its own
    stage, depending on the data and the baselines' params only, so that a new NCF never evaluates them
    again; `evaluate` reads what it wrote. `only` restricts it to those baselines (the first run's
    REFERENCE_BASELINES, written outside DVC so that the next run computes them all)."""
    from pipeline.evaluation.baselines import Unaffordable, baseline_grid, make_baseline
    from pipeline.evaluation.tuning import tune, tuning_readers

    settings = params.evaluate
    data = evaluation_data(ws, params, "test", user_cohorts(ws, settings.cohort_top_countries))
    reports, skipped = {}, {}
    for name, options in settings.baselines().items():
        if only is not None and name not in only:
            continue
        started = time.perf_counter()
        model = make_baseline(name, **options).fit(data.train)
        reports[name] = _test_report(model, data, settings, time.perf_counter() - started)
    tuned_baselines = {n: g for n, g in settings.tuned_baselines().items() if only is None or n in only}
    if tuned_baselines:
        validation = evaluation_data(ws, params, "validation")
        choosers = tuning_readers(validation, settings.tuning_readers, settings.readers_seed)
    for name, grid in tuned_baselines.items():
        try:
            candidates = baseline_grid(name, validation.train, **grid)
        except Unaffordable as reason:
            skipped[name] = str(reason)
            continue
        tuned = tune(candidates, validation, choosers, settings.batch_size)
        record = tuned.record()
        report = _test_report(tuned.model, data, settings, record["seconds"]["fit"])
        reports[name] = report | {"tuning": record}
    io.write_json(reports, ws.reports / BASELINES_REPORT)
    io.write_json(skipped, ws.reports / BASELINES_SKIPPED)
    return {name: report["metrics"] for name, report in reports.items()} | {"skipped": skipped}


def _test_report(model, data: EvaluationData, settings, fit_seconds: float) -> dict:
    """A fitted baseline's full report on the test split, with its fit time (a tuned one's: the grid's)."""
    from pipeline.evaluation.evaluate import evaluate as evaluate_model

    report = evaluate_model(model, data, settings.ks, settings.curve_max_k, batch_size=settings.batch_size)
    return report.as_dict() | {"seconds": report.seconds | {"fit": round(fit_seconds, 3)}}


def evaluate(ws: Workspace, params: Params) -> dict:
    """Stage evaluate: NCF (served blend and network alone), full ranking on the test split under the
    protocol, reported next to the baselines' figures from stage baselines."""
    from pipeline.evaluation.evaluate import ModelReport
    from pipeline.evaluation.evaluate import evaluate as evaluate_model
    from pipeline.model.train import resolve_device
    from pipeline.storage.bundle import load_bundle
    from pipeline.storage.reports import write_reports

    settings = params.evaluate
    data = evaluation_data(ws, params, "test", user_cohorts(ws, settings.cohort_top_countries))
    bundle = load_bundle(ws.model)
    ncf = bundle.recommender(data.train)
    if not ncf.two_stage:  # two-stage retrieval's index and candidates live on the CPU
        bundle.model.to(resolve_device(params.train.device))
    batch = settings.batch_size
    reports = {"ncf": evaluate_model(ncf, data, settings.ks, settings.curve_max_k, batch_size=batch)}
    if bundle.neighbourhood is not None:
        # The same network without its ItemKNN term: what the neural part alone contributes.
        alone = bundle.recommender(data.train, neighbourhood=False).share_item_cache(ncf)
        reports["ncf_without_neighbourhood"] = evaluate_model(
            alone, data, settings.ks, settings.curve_max_k, batch_size=batch
        )
    if settings.two_stage:
        forced = bundle.recommender(data.train, two_stage=True).share_item_cache(ncf)
        reports["ncf_two_stage"] = evaluate_model(
            forced, data, settings.ks, settings.curve_max_k, batch_size=batch
        )
    stored = io.read_json(ws.reports / BASELINES_REPORT)
    reports |= {name: ModelReport.from_dict(name, report) for name, report in stored.items()}
    return write_reports(reports, ws.reports)
