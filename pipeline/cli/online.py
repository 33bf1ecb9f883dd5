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


@experiment_app.command("set")
@reports_errors
def experiment_set(
    mode: Annotated[str, typer.Argument(help="off, ab or shadow")],
    share: Annotated[float, typer.Option(help="Share of readers in the challenger arm (ab).")] = 0.5,
    salt: Annotated[str, typer.Option(help="Hash key of the arm assignment.")] = "exp-1",
) -> None:
    """Override params.yaml's serve.experiment for every running service (effective within seconds)."""
    from pipeline.config import ExperimentParams
    from pipeline.storage import impressions

    store, _ = _feedback_store()
    experiment = ExperimentParams(mode=mode, challenger_share=share, salt=salt)
    impressions.write_setting(store, impressions.EXPERIMENT_KEY, experiment.model_dump())
    typer.echo(json.dumps(experiment.model_dump() | {"source": "run time"}))


@experiment_app.command("clear")
@reports_errors
def experiment_clear() -> None:
    """Back to params.yaml's serve.experiment."""
    from pipeline.storage import impressions

    store, params = _feedback_store()
    impressions.write_setting(store, impressions.EXPERIMENT_KEY, None)
    typer.echo(json.dumps(params.serve.experiment.model_dump() | {"source": "params.yaml"}))


def _online_report(days: float):
    from datetime import timedelta

    from pipeline.ops.registry import load_recommender, production_version
    from pipeline.ops.tracking import client
    from pipeline.serving.monitoring import online_report

    store, params = _feedback_store()
    ws, _ = workspace()
    production = production_version(client(ws.root))
    if production is None:
        raise RuntimeError("no production model: nothing was served yet")
    model = load_recommender(ws.root, str(production.version))
    return online_report(store, model, timedelta(hours=params.serve.attribution_hours), days=days)


@experiment_app.command("report")
@reports_errors
def experiment_report(days: Annotated[float, typer.Option(help="Look back this many days.")] = 30) -> None:
    """Online metrics per model version and arm, and challenger minus production with 95% intervals."""
    report = _online_report(days)
    typer.echo(f"{report.impressions} lists served, {report.clicks} attributed interactions")
    if not report.by_version.empty:
        columns = [
            "model_version",
            "arm",
            "shown",
            "ctr",
            "ctr_low",
            "ctr_high",
            "positive_rate",
            "mrr",
            "coverage",
        ]
        typer.echo(report.by_version[columns].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for label, comparison in (
        ("click-through", report.comparison),
        ("positive rate", report.comparison_positive),
    ):
        arms = comparison["arms"]
        typer.echo(
            f"{label}: challenger {arms['challenger']['rate']:.4f} (n={arms['challenger']['n']}) - production "
            f"{arms['production']['rate']:.4f} (n={arms['production']['n']}) = {comparison['difference']:+.4f} "
            f"[{comparison['low']:+.4f}, {comparison['high']:+.4f}]"
        )


@experiment_app.command("promote")
@reports_errors
def experiment_promote(days: Annotated[float, typer.Option(help="Look back this many days.")] = 30) -> None:
    """Promote `challenger` out of an A/B experiment: through the gate (offline rules plus the online
    result) and into the serving history; production moves only if every rule passed."""
    from pipeline import release
    from pipeline.ops.gate import OnlineEvidence
    from pipeline.ops.registry import challenger_version
    from pipeline.ops.tracking import client

    ws, params = workspace()
    challenger = challenger_version(client(ws.root))
    if challenger is None:
        raise RuntimeError("there is no `challenger` version to promote")
    comparison = _online_report(days).comparison
    evidence = OnlineEvidence(
        comparison["difference"],
        comparison["low"],
        comparison["high"],
        comparison["arms"]["challenger"]["n"],
        comparison["arms"]["production"]["n"],
    )
    outcome = release.gate_and_promote(ws, params, str(challenger.version), online=evidence)
    typer.echo(json.dumps(outcome, indent=2))
    if not outcome["promoted"]:
        fail(f"version {challenger.version} was not promoted: the gate refused it")


@app.command()
@reports_errors
def simulate(
    requests: Annotated[int, typer.Option(help="At most this many recommendation requests.")] = 2000,
    seconds: Annotated[float, typer.Option(help="At most this long.")] = 300,
    mode: Annotated[str, typer.Option(help="Experiment while replaying: off, ab or shadow.")] = "ab",
    share: Annotated[float, typer.Option(help="Challenger share in ab mode.")] = 0.5,
    k: Annotated[int, typer.Option(help="Books per list.")] = 10,
    seed: Annotated[int, typer.Option(help="Order of the simulated readers.")] = 0,
    url: Annotated[
        str | None, typer.Option(help="Drive this running API (loopback only) instead of a scratch one.")
    ] = None,
) -> None:
    """Replay held-out test interactions as readers of the real API (bounded; loopback only) and
    report online click-through per arm, from the simulator's tallies and from the store's attribution."""
    from contextlib import nullcontext
    from datetime import timedelta

    from pipeline.config import ExperimentParams
    from pipeline.ops import registry, tracking
    from pipeline.ops import simulate as simulator
    from pipeline.serving.monitoring import online_report
    from pipeline.storage.feedback import FeedbackStore, feedback_url
    from pipeline.storage.secrets import api_token

    ws, params = workspace()
    experiment = ExperimentParams(mode=mode, challenger_share=share, salt=f"simulation-{seed}")
    readers = simulator.held_out(ws)
    context = (
        simulator.scratch_api(ws.root, experiment)
        if url is None
        else nullcontext((url, feedback_url(ws.root), api_token(ws.root)))
    )
    with context as (api, store_url, token):
        result = simulator.replay(api, token, readers, requests, seconds, k, seed)
    production = registry.production_version(tracking.client(ws.root))
    model = registry.load_recommender(ws.root, str(production.version))
    window = timedelta(hours=params.serve.attribution_hours)
    report = online_report(FeedbackStore(store_url), model, window, days=1)
    result["store"] = store_url
    result["attributed"] = report.by_version.to_dict("records")
    result["comparison"] = report.comparison
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
