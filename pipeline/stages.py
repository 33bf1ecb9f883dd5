"""One function per DVC stage: read with `io`, call the pure core, write with `io`, return a summary.

Each stage writes its whole output folder through `atomic_directory`, so a failing stage leaves the
previous outputs exactly as they were.
"""

from __future__ import annotations

import pandas as pd

from pipeline import io
from pipeline.config import Params, Workspace
from pipeline.features import build_features
from pipeline.ingest import ingest_tables, read_raw_csv
from pipeline.preprocess import build_interactions
from pipeline.rawdata import locate_raw, verify_raw
from pipeline.schemas import (
    INTERACTIONS,
    ITEM_FEATURES,
    PROCESSED_ITEMS,
    PROCESSED_USERS,
    REJECTED,
    USER_FEATURES,
)
from pipeline.split import split_interactions


def ingest(ws: Workspace, params: Params) -> dict:
    verify_raw(ws.raw)
    files = locate_raw(ws.raw)
    raw = {role: read_raw_csv(path, role) for role, path in files.items()}
    result = ingest_tables(raw, {role: path.name for role, path in files.items()}, params.ingest)
    report = result.report()
    for role, table in report.items():
        if table["rows_read"] != table["rows_written"] + table["rows_rejected"]:
            raise AssertionError(f"ingest lost rows of {role}: {table}")
    with io.atomic_directory(ws.interim) as out:
        for role in ("ratings", "users", "books"):
            table = getattr(result, role)
            io.write_parquet(table.clean, out / f"{role}.parquet")
            io.write_parquet(REJECTED.validate(table.rejected), out / "rejected" / f"{role}.parquet")
        io.write_json(report, out / "ingest_report.json")
    return report


def preprocess(ws: Workspace, params: Params) -> dict:
    ratings = io.read_parquet(ws.interim / "ratings.parquet")
    users = io.read_parquet(ws.interim / "users.parquet")
    books = io.read_parquet(ws.interim / "books.parquet")
    built = build_interactions(ratings, users, books, params.preprocess)
    splits = split_interactions(built.interactions, params.preprocess)
    counts = dict(built.counts) | {f"{name}_rows": len(frame) for name, frame in splits.items()}
    counts["protocol"] = "bx-implicit-v1"
    with io.atomic_directory(ws.processed) as out:
        for name, frame in splits.items():
            io.write_parquet(INTERACTIONS.validate(frame), out / f"{name}.parquet")
        io.write_parquet(INTERACTIONS.validate(built.dislikes), out / "dislikes.parquet")
        io.write_parquet(PROCESSED_USERS.validate(built.users), out / "users.parquet")
        io.write_parquet(PROCESSED_ITEMS.validate(built.items), out / "items.parquet")
        io.write_json(counts, out / "protocol_report.json")
    return counts


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
    from pipeline.features import OTHER, FeatureVocabulary

    vocabulary = FeatureVocabulary.from_json(io.read_json(ws.features / "vocabulary.json"))
    encoded = io.read_parquet(ws.features / "user_features.parquet").set_index("user_idx").sort_index()
    ages = pd.Series(vocabulary.values["age_bucket"])[encoded["age_bucket"]].to_numpy()
    countries = pd.Series(vocabulary.values["country"])[encoded["country"]]
    named = set(vocabulary.values["country"][2 : 2 + top_countries])
    countries = countries.where(countries.isin(named) | countries.str.startswith("<"), OTHER).to_numpy()
    return pd.DataFrame({"age_bucket": ages, "country": countries}, index=encoded.index)


def evaluate(ws: Workspace, params: Params) -> dict:
    from pipeline.baselines import make_baseline
    from pipeline.evaluate import EvaluationData
    from pipeline.evaluate import evaluate as evaluate_model
    from pipeline.reports import write_reports

    settings = params.evaluate
    users = io.read_parquet(ws.processed / "users.parquet", columns=["user_idx"])
    items = io.read_parquet(ws.processed / "items.parquet")
    data = EvaluationData.build(
        load_splits(ws), items, len(users), "test", user_cohorts(ws, settings.cohort_top_countries)
    )
    reports = {}
    for name, options in settings.baselines().items():
        model = make_baseline(name, **options).fit(data.train)
        reports[name] = evaluate_model(
            model, data, settings.ks, settings.curve_max_k, batch_size=settings.batch_size
        )
    return write_reports(reports, ws.reports)
