"""`bookrec feedback ...`, `experiment ...`, `simulate` and `books ...`: the online loop."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from pipeline.cli.common import app, fail, reports_errors, workspace
from pipeline.cli.data import announce_new_data

feedback_app = typer.Typer(help="Live feedback stored by the API and the dashboard.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")


@feedback_app.command("export")
@reports_errors
def feedback_export() -> None:
    """Write stored interactions and added books to data/raw/feedback (tracked by DVC) so the next
    training run ingests them."""
    from pipeline.ops.versioning import track_raw_data
    from pipeline.storage.feedback import FeedbackStore, export_to_raw

    ws, _ = workspace()
    count = export_to_raw(FeedbackStore.for_root(ws.root), ws.feedback)
    changed = track_raw_data(ws.root)
    typer.echo(
        f"{count} interactions exported to {ws.feedback}"
        + ("; data.dvc updated" if changed else "; no change")
    )
    if changed:
        announce_new_data(ws.root, {"source": "feedback", "interactions": count})


experiment_app = typer.Typer(
    help="Online experiments: A/B or shadow serving of `challenger`, their report, promotion.",
    no_args_is_help=True,
)
app.add_typer(experiment_app, name="experiment")


def _feedback_store():
    from pipeline.storage.feedback import FeedbackStore

    ws, params = workspace()
    return FeedbackStore.for_root(ws.root), params


def _versions(root) -> tuple[str, str]:
    """(production, challenger) versions of the registry; both must exist."""
    from pipeline.ops.registry import challenger_version, production_version
    from pipeline.ops.tracking import client

    registry_client = client(root)
    production, challenger = production_version(registry_client), challenger_version(registry_client)
    if production is None or challenger is None:
        raise RuntimeError("an A/B experiment needs both a `production` and a `challenger` version")
    return str(production.version), str(challenger.version)


@experiment_app.command("set")
@reports_errors
def experiment_set(
    mode: Annotated[str, typer.Argument(help="off, ab or shadow")],
    share: Annotated[float, typer.Option(help="Share of readers in the challenger arm (ab).")] = 0.5,
    salt: Annotated[
        str | None, typer.Option(help="Hash key of the arm assignment (default: the experiment's id).")
    ] = None,
    baseline_ctr: Annotated[
        float | None,
        typer.Option(help="Expected click-through to plan from, when production has no recent traffic."),
    ] = None,
    pilot_days: Annotated[float, typer.Option(help="Plan from production's traffic of these days.")] = 30,
) -> None:
    """Start an A/B experiment (ab: a record with id, start, salt, both versions and the planned
    size) or serve without one (off, shadow: the open experiment ends); every running service
    follows within seconds."""
    from pipeline.config import ExperimentParams
    from pipeline.ops import experiments

    store, params = _feedback_store()
    ws, _ = workspace()
    if mode == "ab":
        production, challenger = _versions(ws.root)
        plan = experiments.plan(store, params, production, challenger, share, salt, baseline_ctr, pilot_days)
        experiments.start(store, params, plan)
        typer.echo(json.dumps(plan.as_dict(), default=str, indent=2))
        return
    setting = ExperimentParams(
        **(params.serve.experiment.model_dump() | {"mode": mode, "challenger_share": share})
        | ({"salt": salt} if salt else {})
    )
    ended = experiments.switch(store, setting)
    typer.echo(json.dumps({"mode": mode, "ended": None if ended is None else ended.id}))


@experiment_app.command("clear")
@reports_errors
def experiment_clear() -> None:
    """Back to params.yaml's serve.experiment; the open experiment ends."""
    from pipeline.ops import experiments

    store, params = _feedback_store()
    ended = experiments.switch(store, None)
    typer.echo(
        json.dumps(
            params.serve.experiment.model_dump()
            | {"source": "params.yaml", "ended": None if ended is None else ended.id}
        )
    )


@experiment_app.command("list")
@reports_errors
def experiment_list() -> None:
    """Every experiment recorded: id, start and end, versions, planned readers per arm."""
    import pandas as pd

    from pipeline.storage.experiments import all_experiments

    store, _ = _feedback_store()
    rows = [plan.as_dict() for plan in all_experiments(store)]
    typer.echo(pd.DataFrame(rows).to_string(index=False) if rows else "no experiment recorded yet")


def _online_report(days: float, experiment_id: str | None = None):
    from datetime import timedelta

    from pipeline.ops.registry import load_recommender, production_version
    from pipeline.ops.tracking import client
    from pipeline.serving.monitoring import online_report
    from pipeline.storage.experiments import find

    store, params = _feedback_store()
    ws, _ = workspace()
    production = production_version(client(ws.root))
    if production is None:
        raise RuntimeError("no production model: nothing was served yet")
    model = load_recommender(ws.root, str(production.version))
    plan = None if experiment_id is None else find(store, experiment_id)
    window = timedelta(hours=params.serve.attribution_hours)
    return online_report(store, model, window, days=days, confidence=params.gate.confidence, experiment=plan)


@experiment_app.command("report")
@reports_errors
def experiment_report(
    days: Annotated[float, typer.Option(help="Look back this many days (the tables).")] = 30,
    experiment: Annotated[str | None, typer.Option(help="Experiment id (default: the latest).")] = None,
) -> None:
    """Online metrics per model version and arm, and the experiment's challenger minus production
    (readers as the unit) against its planned size and the online margin."""
    report = _online_report(days, experiment)
    _, params = workspace()
    typer.echo(f"{report.impressions} lists served, {report.clicks} attributed interactions")
    if not report.by_version.empty:
        columns = [
            "model_version",
            "arm",
            "readers",
            "shown",
            "ctr",
            "ctr_low",
            "ctr_high",
            "positive_rate",
            "mrr",
        ]
        typer.echo(report.by_version[columns].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if report.experiment is None:
        typer.echo("no experiment recorded: `bookrec experiment set ab` starts one")
        return
    plan = report.experiment
    typer.echo(
        f"experiment {plan.id}: v{plan.challenger_version} against v{plan.production_version} since "
        f"{plan.started_at:%Y-%m-%d %H:%M} UTC"
        + (f" until {plan.ended_at:%Y-%m-%d %H:%M} UTC" if plan.ended_at else "")
    )
    for result in (report.comparison, report.comparison_positive):
        typer.echo(result.describe(params.gate.online_margin))


@experiment_app.command("promote")
@reports_errors
def experiment_promote(
    experiment: Annotated[str | None, typer.Option(help="Experiment id (default: the latest).")] = None,
) -> None:
    """Promote an experiment's challenger: refused before the planned size (no peeking); then through
    the gate (offline rules plus non-inferiority online); production moves only if every rule passed."""
    from pipeline import release
    from pipeline.ops.registry import production_version
    from pipeline.ops.tracking import client

    ws, params = workspace()
    report = _online_report(30, experiment)
    plan, result = report.experiment, report.comparison
    if plan is None:
        raise RuntimeError("no experiment recorded: start one with `bookrec experiment set ab`")
    if not result.reached:
        fail(
            f"experiment {plan.id} has {result.challenger_readers}/{plan.planned_challenger} challenger and "
            f"{result.production_readers}/{plan.planned_production} production readers: no decision before "
            "the planned size (looking early and stopping at a good moment promotes worse models)"
        )
    production = production_version(client(ws.root))
    if production is None or str(production.version) != plan.production_version:
        fail(f"production moved since experiment {plan.id} started (it compared v{plan.production_version})")
    outcome = release.gate_and_promote(ws, params, plan.challenger_version, online=result)
    typer.echo(json.dumps(outcome, indent=2))
    if not outcome["promoted"]:
        fail(f"version {plan.challenger_version} was not promoted: the gate refused it")


@app.command()
@reports_errors
def simulate(
    requests: Annotated[int, typer.Option(help="At most this many recommendation requests.")] = 2000,
    seconds: Annotated[float, typer.Option(help="At most this long.")] = 300,
    mode: Annotated[str, typer.Option(help="Experiment while replaying: off, ab or shadow.")] = "ab",
    share: Annotated[float, typer.Option(help="Challenger share in ab mode.")] = 0.5,
    k: Annotated[int, typer.Option(help="Books per list.")] = 10,
    seed: Annotated[int, typer.Option(help="Order of the simulated readers.")] = 0,
    baseline_ctr: Annotated[
        float | None,
        typer.Option(help="Click-through to plan the experiment from (default: production's hit rate@10)."),
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="Drive this running API (loopback only) instead of a scratch one.")
    ] = None,
) -> None:
    """Replay held-out test interactions as readers of the real API (bounded; loopback only) and
    report online click-through per arm, from the simulator's tallies and from the store's attribution,
    with the experiment's comparison (readers as the unit)."""
    from contextlib import nullcontext
    from datetime import timedelta

    from pipeline.config import ExperimentParams
    from pipeline.ops import experiments, registry, tracking
    from pipeline.ops import simulate as simulator
    from pipeline.serving.monitoring import online_report
    from pipeline.storage.feedback import FeedbackStore, feedback_url
    from pipeline.storage.secrets import api_token

    ws, params = workspace()
    experiment = ExperimentParams(
        **(
            params.serve.experiment.model_dump()
            | {"mode": mode, "challenger_share": share, "salt": f"simulation-{seed}"}
        )
    )
    plan = None
    if mode == "ab" and url is None:
        production, challenger = _versions(ws.root)
        if baseline_ctr is None:
            # A simulated reader clicks the held-out books they are shown: production's offline hit
            # rate is the click-through to expect.
            tags = tracking.client(ws.root).get_model_version(registry.MODEL_NAME, production).tags
            baseline_ctr = float(tags[registry.metric_tag("hit_rate@10")])
        live = FeedbackStore.for_root(ws.root)
        plan = experiments.plan(live, params, production, challenger, share, experiment.salt, baseline_ctr)
    readers = simulator.held_out(ws)
    context = (
        simulator.scratch_api(ws.root, params, experiment, plan)
        if url is None
        else nullcontext((url, feedback_url(ws.root), api_token(ws.root)))
    )
    with context as (api, store_url, token):
        result = simulator.replay(api, token, readers, requests, seconds, k, seed, params.gate.confidence)
    production_model = registry.production_version(tracking.client(ws.root))
    model = registry.load_recommender(ws.root, str(production_model.version))
    window = timedelta(hours=params.serve.attribution_hours)
    report = online_report(
        FeedbackStore(store_url), model, window, days=1, confidence=params.gate.confidence, experiment=plan
    )
    result["store"] = store_url
    result["attributed"] = report.by_version.to_dict("records")
    if report.comparison is not None:
        result["experiment"] = report.experiment.as_dict()
        result["comparison"] = report.comparison.as_dict()
        result["decision"] = report.comparison.describe(params.gate.online_margin)
    typer.echo(json.dumps(result, indent=2, default=str))


books_app = typer.Typer(
    help="The catalog between trainings: books added, books that must not be served.", no_args_is_help=True
)
app.add_typer(books_app, name="books")


@books_app.command("add")
@reports_errors
def books_add(
    file: Annotated[
        str, typer.Argument(help="A CSV in the Book-Crossing books format (BX-Books.csv's columns)")
    ],
) -> None:
    """Add books to the catalog without retraining: every running service serves them within
    serve.rules_refresh_seconds; `bookrec feedback export` hands them to the next training run. A bad
    row is refused with its line and field, and nothing is stored."""
    from pathlib import Path

    from pipeline.storage.added_books import add_books_file

    store, params = _feedback_store()
    typer.echo(f"{add_books_file(store, Path(file), params.ingest)} books added to the catalog")


@books_app.command("remove")
@reports_errors
def books_remove(isbns: Annotated[list[str], typer.Argument(help="ISBNs")]) -> None:
    """Withdraw books added by mistake (books of the trained catalog: `bookrec books unavailable`)."""
    from pipeline.storage.added_books import remove_books

    store, _ = _feedback_store()
    typer.echo(f"{remove_books(store, isbns)} added books removed")


@books_app.command("unavailable")
@reports_errors
def books_unavailable(
    isbns: Annotated[list[str], typer.Argument(help="ISBNs")],
    reason: Annotated[str, typer.Option(help="Why (shown in `bookrec books list`).")] = "unavailable",
) -> None:
    """Never serve these books (every running service, within seconds, no retraining)."""
    from pipeline.storage import impressions

    store, _ = _feedback_store()
    typer.echo(f"{impressions.set_unavailable(store, isbns, reason)} books marked unavailable")


@books_app.command("available")
@reports_errors
def books_available(isbns: Annotated[list[str], typer.Argument(help="ISBNs")]) -> None:
    """Serve these books again."""
    from pipeline.storage import impressions

    store, _ = _feedback_store()
    typer.echo(f"{impressions.set_available(store, isbns)} books available again")


@books_app.command("list")
@reports_errors
def books_list() -> None:
    """The books marked unavailable, and why."""
    from pipeline.storage import impressions

    store, _ = _feedback_store()
    for isbn, reason in sorted(impressions.unavailable(store).items()):
        typer.echo(f"{isbn}\t{reason}")
