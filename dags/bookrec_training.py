"""bookrec training pipeline: fetch -> ingest -> preprocess -> features -> train | baselines -> evaluate -> register -> gate.

Every data and model step is a DVC stage run through DVC's Python API, so dvc.lock and the DVC cache
decide what reruns: a stage whose inputs did not change is skipped. Registration and the promotion
gate call `pipeline` directly. Tasks pass references (stage names, model versions), never data.
"""

from __future__ import annotations

import os
import shutil
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import (
    Asset,
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    dag,
    get_current_context,
    task,
)

ROOT = Path(os.environ.get("BOOKREC_ROOT") or Path(__file__).resolve().parents[1])
RAW_DATA = Asset(name="bookrec_raw_data", uri=(ROOT / "data" / "raw").as_uri())

# Run-time knobs shown as a form when triggering from the UI; each overrides params.yaml for that run only.
TRAIN_KNOBS = {
    "gmf_dim": ("integer", "Width of the GMF tower", 1, 2048),
    "mlp_dim": ("integer", "Width of the MLP tower's embeddings", 1, 512),
    "lr": ("number", "Adam learning rate of the dense layers in the first epoch", 1e-5, 1.0),
    "embedding_lr": ("number", "Learning rate of the embedding tables in the first epoch", 1e-5, 1.0),
    "lr_decay": ("number", "Learning-rate factor applied after each epoch (1 = constant)", 0.01, 1.0),
    "epochs": ("integer", "Upper bound on training epochs", 1, 500),
    "negatives": ("integer", "Sampled negatives per positive", 1, 64),
    "l2": ("number", "L2 on the embeddings a batch uses", 0.0, 1.0),
    "dropout": ("number", "Dropout in the MLP tower", 0.0, 0.9),
    "max_seconds": ("number", "Training time budget in seconds (0 = none)", 0.0, 86400.0),
}
FORM_SECTIONS = ("train",)  # what a run's form may change; the gate's thresholds are never among them
# The first run of `make up` (no production model yet): the baselines task evaluates only what the gate
# compares with (random, popularity: seconds), outside DVC, so that a model is served within minutes; the
# next run computes every baseline (DVC sees the stage as not run) and evaluates again.
REFERENCE_ONLY = "baselines.reference_only"


def _defaults() -> dict:
    from pipeline.config import load_params

    return {"train": load_params(ROOT).train.model_dump()}


def _form() -> dict[str, Param]:
    defaults = _defaults()
    form = {
        f"train.{key}": Param(
            defaults["train"][key],
            type=kind,
            minimum=low,
            maximum=high,
            description=f"{text} (params.yaml train.{key}: {defaults['train'][key]})",
        )
        for key, (kind, text, low, high) in TRAIN_KNOBS.items()
    }
    form[REFERENCE_ONLY] = Param(
        False,
        type="boolean",
        description="Baselines: only the gate's reference (random, popularity), the others in the next run "
        "(what the first run of `make up` does, to serve a model sooner)",
    )
    return form


def run_values(values: dict) -> dict:
    """A run's form and conf values, checked: only training values (and the first run's
    reference-only baselines) may change for a run. A gate threshold is refused (params.yaml's gate
    section is its only home; a deliberate override is `bookrec registry promote`, with the API token
    and a reason), and so is any other key."""
    refused = sorted(
        key for key in values if key != REFERENCE_ONLY and key.split(".", 1)[0] not in FORM_SECTIONS
    )
    if refused:
        raise ValueError(
            f"this run sets {refused}: a run may change only {', '.join(f'{s}.*' for s in FORM_SECTIONS)} values; "
            "gate thresholds live in params.yaml alone (override a decision with `bookrec registry promote`)"
        )
    return values


def _checked_run_values() -> dict:
    context = get_current_context()
    return run_values({**context["params"], **(context["dag_run"].conf or {})})


def _overrides(section: str) -> dict:
    """The run's form values that differ from params.yaml, as dotted keys."""
    defaults = _defaults()[section]
    return {
        key: value
        for key, value in _checked_run_values().items()
        if key.startswith(f"{section}.") and value != defaults[key.split(".", 1)[1]]
    }


def _stage(name: str, uses_form: bool = False) -> dict:
    """Run DVC stage `name` in the repository's workspace, or, for a stage that `uses_form` when the
    run's form sets train values, as a DVC experiment in a temporary workspace (`dvc exp run --temp -S ...`): params.yaml is never
    rewritten and the workspace keeps its own model; the experiment's dvc.lock records the values."""
    from pipeline.ops import progress
    from pipeline.ops.versioning import experiment_name, reproduce, run_experiment

    overrides = _overrides("train") if uses_form else {}
    with progress.task(name) as shown:
        if not overrides:
            ran = reproduce(ROOT, name)
            shown["skipped"] = name not in ran
            return {"stage": name, "ran": ran, "skipped": name not in ran, "overrides": {}}
        experiment = experiment_name("airflow", get_current_context()["run_id"], name)
        rev = run_experiment(ROOT, name, overrides, experiment)
        shown["experiment"] = experiment
        return {"stage": name, "experiment": experiment, "rev": rev, "skipped": False, "overrides": overrides}


def _reference_baselines() -> dict:
    """The gate's reference baselines only, written where stage `baselines` writes, outside DVC: its
    lock records no run, so the next run computes every baseline. Skipped when DVC holds them all."""
    from pipeline import stages
    from pipeline.config import Workspace
    from pipeline.ops import progress
    from pipeline.ops.versioning import is_up_to_date

    with progress.task("baselines") as shown:
        if is_up_to_date(ROOT, "baselines"):
            shown["skipped"] = True
            return {"stage": "baselines", "ran": [], "skipped": True, "overrides": {}}
        ws, params = Workspace.load(ROOT)
        stages.baselines(ws, params, only=stages.REFERENCE_BASELINES)
        shown["only"] = ", ".join(stages.REFERENCE_BASELINES)
    return {"stage": "baselines", "reference_only": True, "skipped": False, "overrides": {}}


def _experiment_workspace(evaluated: dict) -> tuple:
    """The workspace a task after `evaluate` works on: the repository's, or, for a run with train
    values, one whose model and reports are the experiment's (checked out below run/experiments)."""
    from pipeline.config import Workspace
    from pipeline.ops.versioning import checkout_experiment

    ws, params = Workspace.load(ROOT)
    if "experiment" not in evaluated:
        return ws, params, None
    experiment = checkout_experiment(ROOT, evaluated["experiment"], evaluated["rev"], params.paths)
    ws, params = Workspace.load(ROOT, experiment.paths_overrides(params.paths))
    return ws, params, experiment


@dag(
    dag_id="bookrec_training",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 3 * * 1", timezone="UTC"), assets=RAW_DATA
    ),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,  # the schedule and the new-data asset must start runs by themselves
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
    },
    params=_form(),
    tags=["bookrec", "training"],
    doc_md="""
# bookrec training

Weekly (Monday 03:00 UTC) **or** as soon as new raw data is registered (asset `bookrec_raw_data`,
emitted by `bookrec data fetch` and by the live-feedback export).

Each data/model task runs its DVC stage: unchanged inputs mean the stage is skipped, so a re-run
with the same data retrains nothing and registers no duplicate version. A run whose form changes
train values runs `train` and `evaluate` as a DVC experiment (`dvc exp run --temp -S ...`, named
`airflow-<run id>-<stage>`, listed by `dvc exp show`): `params.yaml` is never rewritten, the
experiment's dvc.lock and the MLflow run record the values, and the workspace keeps its own model.

`register` logs the run and the model to MLflow and registers it as `challenger`; `gate_and_promote`
moves `production` only when every check of the gate passes, with the thresholds of params.yaml's
gate section: a run that tries to set one fails (docs/lifecycle.md). To re-run from a failed task, clear it
(with downstream) in the grid view.
""",
)
def bookrec_training():
    @task(
        doc_md="Fetch the raw Book-Crossing files if missing and verify their SHA-256; export the live "
        "feedback stored by the API and the dashboard next to them; record data/raw in DVC."
    )
    def fetch_and_validate() -> dict:
        from pipeline.config import Workspace
        from pipeline.ops import progress
        from pipeline.ops.versioning import track_raw_data
        from pipeline.storage.feedback import FeedbackStore, export_to_raw
        from pipeline.storage.rawdata import fetch

        _checked_run_values()  # a run that sets a gate threshold fails here, before any work
        ws, _ = Workspace.load(ROOT)
        with progress.task("fetch_and_validate"):
            manifest = fetch(ws.raw, ws.cache, show_progress=False)
            interactions = export_to_raw(FeedbackStore.for_root(ROOT), ws.feedback)
            changed = track_raw_data(ROOT)
        return {
            "variant": manifest["variant"],
            "feedback_interactions": interactions,
            "raw_data_changed": changed,
        }

    @task(doc_md="DVC stage `ingest`: exact parsing and validation; unusable rows quarantined.")
    def ingest(_: dict) -> dict:
        return _stage("ingest")

    @task(
        doc_md="DVC stage `preprocess`: protocol bx-implicit-v2 (positives, dislikes, 5-core, the stable hash split)."
    )
    def preprocess(_: dict) -> dict:
        return _stage("preprocess")

    @task(doc_md="DVC stage `features`: side-feature vocabularies and encodings.")
    def features(_: dict) -> dict:
        return _stage("features")

    @task(
        doc_md="DVC stage `train`: NCF with BPR, early stopping on validation; the form's train values apply."
    )
    def train(_: dict) -> dict:
        return _stage("train", uses_form=True)

    @task(
        doc_md="DVC stage `baselines`: every baseline over the full catalog on the test split; depends on "
        "the data and the baselines' params only, so a new NCF never evaluates them again."
    )
    def baselines(_: dict) -> dict:
        if get_current_context()["params"].get(REFERENCE_ONLY):
            return _reference_baselines()
        return _stage("baselines")

    @task(doc_md="DVC stage `evaluate`: NCF over the full catalog on the test split, next to the baselines.")
    def evaluate(_: dict, __: dict) -> dict:
        return _stage("evaluate", uses_form=True)

    @task(doc_md="Log the run and the model to MLflow; register it as `challenger` (idempotent per model).")
    def register(evaluated: dict) -> dict:
        from pipeline import release
        from pipeline.ops import progress

        ws, params, experiment = _experiment_workspace(evaluated)
        with progress.task("register") as shown:
            registered = release.register_model(ws, params, experiment)
            shown["version"] = registered["version"]
        if experiment is not None:  # MLflow holds the artifacts now; the checkout was only for this
            shutil.rmtree(ROOT / experiment.folder)
        return registered

    @task(doc_md="The promotion gate; `production` moves only if every check passed.")
    def gate_and_promote(registered: dict) -> dict:
        from pipeline import release
        from pipeline.config import Workspace
        from pipeline.ops import progress

        _checked_run_values()
        ws, params = Workspace.load(ROOT)  # the gate's thresholds: params.yaml's, whatever the run says
        with progress.task("gate_and_promote") as shown:
            outcome = release.gate_and_promote(ws, params, registered["version"])
            shown["promoted"] = outcome.get("promoted")
        return outcome

    featured = features(preprocess(ingest(fetch_and_validate())))
    gate_and_promote(register(evaluate(train(featured), baselines(featured))))


bookrec_training()
