"""What every `bookrec` command shares: the root app, the error policy, the workspace."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any

import typer

app = typer.Typer(
    help="bookrec: book recommendations on Book-Crossing, from raw data to served models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Failures a user can act on: shown as one line, exit status 1, no traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, RuntimeError, OSError)


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except typer.Exit:
            raise
        except EXPECTED_ERRORS as err:
            fail(str(err))
        except Exception as err:
            # The stores' own errors (MLflow, pandera) are about the input or the service, not our code.
            if type(err).__module__.split(".")[0] in ("mlflow", "pandera", "dvc"):
                fail(f"{type(err).__name__}: {err}")
            raise

    return wrapper


def workspace():
    from pipeline.config import Workspace

    return Workspace.load()


def run_stage(name: str) -> None:
    from pipeline import stages

    ws, params = workspace()
    started = time.perf_counter()
    summary = getattr(stages, name)(ws, params)
    typer.echo(json.dumps(summary, indent=2, default=str))
    typer.secho(f"{name}: done in {time.perf_counter() - started:.1f} s", fg=typer.colors.GREEN, err=True)
