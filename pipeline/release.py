"""Registration and promotion, after the DVC stages: log the trained model to MLflow, register it as
the `challenger`, run the gate and move `production` only if every rule passed. Each function is one
step of the training DAG (`register_model`, `gate_and_promote`) or the `bookrec register` command."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline import io
from pipeline.config import Params, Workspace
from pipeline.stages import evaluation_data

if TYPE_CHECKING:
    from pipeline.online import ExperimentResult
    from pipeline.ops.gate import Ranked
    from pipeline.ops.versioning import Experiment

# What the pyfunc imports (tests/code/test_layout.py checks that serving loads no ingestion,
# training or evaluation code, so ftfy, pandera, scikit-learn and implicit are not needed).
SERVING_REQUIREMENTS = (
    "mlflow",
    "torch",
    "numpy",
    "pandas",
    "pyarrow",
    "scipy",
    "safetensors",
    "pydantic",
    "pyyaml",
    "hnswlib",
)


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in SERVING_REQUIREMENTS]


def gate_rules(ws: Workspace, params: Params) -> str:
    """What every list of one gate run is ranked under: the split (rule and data version), the
    protocol, the list rules and the reader sample. Two figures with different rules are never
    compared (`gate.compare` refuses)."""
    import json

    from pipeline.data.protocol import PROTOCOL
    from pipeline.data.split import split_fingerprint
    from pipeline.ops.versioning import data_version

    return json.dumps(
        {
            "protocol": PROTOCOL,
            "split": split_fingerprint(params.preprocess),
            "data": data_version(ws.root).get(params.paths.processed, ""),
            "one_per_work": True,
            "max_per_author": params.serve.max_per_author,
            "max_readers": params.evaluate.max_readers,
            "max_scored_pairs": params.evaluate.max_scored_pairs,
            "readers_seed": params.evaluate.readers_seed,
        },
        sort_keys=True,
    )


def rank_versions(ws: Workspace, params: Params, versions: list[str]) -> tuple[dict, Ranked]:
    """Registered `versions` and the popularity baseline, each ranked here for the test split's
    readers by the one evaluation path (`stages.evaluation_data`, loaded through the registry and
    scored in this split's ids), with their per-reader figures: (version -> Ranked, popularity)."""
    import numpy as np

    from pipeline.evaluation import metrics
    from pipeline.evaluation.baselines import make_baseline
    from pipeline.ops.gate import K, Ranked
    from pipeline.ops.registry import load_recommender
    from pipeline.serving.remap import RemappedRecommender

    data = evaluation_data(ws, params, "test")
    readers = data.users_with_truth()
    truth = data.truth[readers]
    popularity = metrics.item_popularity(data.train)
    n_train_users = int((np.diff(data.train.indptr) > 0).sum())
    rules = gate_rules(ws, params)
    users = io.read_parquet(ws.processed / "users.parquet")
    items = io.read_parquet(ws.processed / "items.parquet")

    def ranked(name: str, recommender) -> Ranked:
        top = data.lists(recommender, readers, K, batch_size=params.evaluate.batch_size)
        return Ranked(
            name,
            rules,
            readers,
            metrics.accuracy_per_user(top, truth, K)["ndcg"],
            metrics.novelty_per_user(top, popularity, n_train_users),
            top,
            data.n_items,
        )

    out = {}
    for version in dict.fromkeys(str(v) for v in versions):
        served = load_recommender(ws.root, version)
        out[version] = ranked(version, RemappedRecommender(served, users, items, data.train))
        del served  # one version in memory at a time
    return out, ranked("popularity", make_baseline("popularity").fit(data.train))


def compare_versions(ws: Workspace, params: Params, challenger: str, reference: str) -> dict:
    """`bookrec gate compare`: two registered versions ranked here on the same readers under the
    same rules, and the gate's paired comparison of the first against the second."""
    from pipeline.ops.gate import GateThresholds, compare

    ranked, _ = rank_versions(ws, params, [challenger, reference])
    thresholds = GateThresholds(**params.gate.model_dump())
    comparison = compare(ranked[str(challenger)], ranked[str(reference)], thresholds)
    return {
        "figures": {version: r.summary() for version, r in ranked.items()},
        "comparison": comparison,
        "thresholds": thresholds,
    }


def _data_drift(ws: Workspace, client) -> dict[str, str]:
    """This version's data profile and how it moved from production's (tags of the run and version)."""
    import json

    from pipeline.data.profile import data_profile, drift
    from pipeline.ops import registry

    tables = [
        io.read_parquet(ws.processed / f"{n}.parquet") for n in ("train", "validation", "test", "dislikes")
    ]
    users = io.read_parquet(ws.processed / "users.parquet")["user_id"].astype(str)
    items = io.read_parquet(ws.processed / "items.parquet")["isbn"].astype(str)
    profile = data_profile(tables, len(users), len(items), io.read_json(ws.interim / "ingest_report.json"))
    production = registry.production_version(client)
    previous_ids = previous_profile = None
    if production is not None:
        served = registry.load_recommender(ws.root, str(production.version))
        previous_ids = (set(served.users["user_id"].astype(str)), set(served.items["isbn"].astype(str)))
        previous_profile = (
            json.loads(production.tags["data_profile"]) if "data_profile" in production.tags else None
        )
    moved = drift(previous_profile, profile, previous_ids, (set(users), set(items)))
    return {
        "data_profile": json.dumps(profile),
        "data_drift": json.dumps(moved),
        "data_drift_against": "" if production is None else str(production.version),
    }


def register_model(ws: Workspace, params: Params, experiment: Experiment | None = None) -> dict:
    """Log the trained model to MLflow and register it as the `challenger` (once per distinct model).
    A model trained in a DVC `experiment` takes its data lineage from the experiment's lock file."""
    from pipeline.data.split import split_fingerprint
    from pipeline.ops import registry, tracking, versioning
    from pipeline.storage.bundle import fingerprint

    metadata = io.read_json(ws.model / "metadata.json")
    history = io.read_json(ws.model / "history.json")
    metrics = io.read_json(ws.reports / "metrics.json")
    if "ncf" not in metrics:
        raise FileNotFoundError(
            f"{ws.reports / 'metrics.json'} has no NCF metrics; run `bookrec evaluate` first"
        )
    model_fingerprint = fingerprint(ws.model)
    client = tracking.use_store(ws.root)  # the fluent API logs and registers below
    version = registry.find_version(client, model_fingerprint)
    if version is not None:
        return {"version": str(version.version), "created": False, "run_id": version.run_id}
    data_version = versioning.data_version(ws.root if experiment is None else ws.root / experiment.folder)
    lineage = {
        **tracking.git_commit(ws.root),
        **{f"data:{path}": md5 for path, md5 in data_version.items()},
        "split_version": data_version.get(params.paths.processed, ""),
        "split_fingerprint": split_fingerprint(params.preprocess),
        "feature_hash": metadata["feature_hash"],
        "protocol": metadata["protocol"],
        "trained_at": metadata["trained_at"],
        "run_name": metadata["run_name"],
        **({} if experiment is None else experiment.tags()),
        **_data_drift(ws, client),
    }
    run = tracking.log_training_run(
        ws.root,
        run_name=metadata["run_name"],
        params=metadata["train_params"],
        tags=lineage | {"model_fingerprint": model_fingerprint},
        history=history["epochs"],
        metrics=metrics,
        model_name="ncf",
        bundle_dir=ws.model,
        artifacts=[
            ws.reports / "plots",
            ws.reports / "train_curve.csv",
            ws.reports / "cohorts.json",
            ws.reports / "metrics.json",
            ws.model / "feature_spec.json",
        ],
        pip_requirements=pip_requirements(),
    )
    version, created = registry.register(
        client,
        run.model_uri,
        model_fingerprint,
        lineage
        | registry.metric_tags(metrics["ncf"])
        | {"popularity_ndcg_at_10": str(metrics["popularity"]["ndcg@10"])},
    )
    return {"version": str(version.version), "created": created, "run_id": run.run_id}


def gate_and_promote(
    ws: Workspace, params: Params, version: str, promote: bool = True, online: ExperimentResult | None = None
) -> dict:
    """Run the promotion gate for `version` (with an experiment's `online` result, if any): rank it,
    production and every version ever promoted on its split here, decide, record the decision on
    the version, and move `production` to it only if every check passed."""
    from pipeline.ops import registry, tracking
    from pipeline.ops.gate import GateInputs, GateThresholds, Reference, best_of, decide

    client = tracking.client(ws.root)
    candidate = client.get_model_version(registry.MODEL_NAME, str(version))
    fingerprint = candidate.tags.get("split_fingerprint")
    production = registry.production_version(client)
    splits = {v: registry.split_fingerprint_of(client, v) for v in registry.promoted_versions(client)}
    if production is not None:
        splits[str(production.version)] = production.tags.get("split_fingerprint")
    comparable = [v for v, split in splits.items() if v != str(candidate.version) and split == fingerprint]
    ranked, popularity = rank_versions(ws, params, [str(candidate.version), *comparable])
    best = best_of([ranked[v] for v in comparable])

    def reference(v: str | None) -> Reference | None:
        return None if v is None else Reference(v, splits.get(v, fingerprint), ranked.get(v))

    inputs = GateInputs(
        candidate=ranked[str(candidate.version)],
        split_fingerprint=fingerprint,
        popularity=popularity,
        production=reference(None if production is None else str(production.version)),
        best_promoted=reference(None if best is None else best.version),
        online=online,
    )
    thresholds = GateThresholds(**params.gate.model_dump())
    decision = decide(inputs, thresholds)
    registry.record_decision(client, decision, thresholds)
    aliases = {"production": None if production is None else str(production.version)}
    if decision.passed and promote:
        aliases = registry.promote(
            client, str(candidate.version), decision.summary(), by="the promotion gate"
        )
    return {
        "version": str(candidate.version),
        "gate": "passed" if decision.passed else "refused",
        "reasons": decision.reasons,
        "promoted": bool(decision.passed and promote),
        **aliases,
    }


def register(ws: Workspace, params: Params, promote: bool = True) -> dict:
    """`bookrec register`: tracking, registration and the gate for the latest trained model."""
    registered = register_model(ws, params)
    return registered | gate_and_promote(ws, params, registered["version"], promote)
