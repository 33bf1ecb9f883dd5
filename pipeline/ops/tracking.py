"""MLflow tracking: the only module that opens runs. One experiment, `bookrec`.

The tracking URI defaults to `sqlite:///<repo>/mlruns/mlflow.db` with artifacts under `mlruns/`;
`MLFLOW_TRACKING_URI` overrides it (the compose deployment points it at the MLflow server).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

EXPERIMENT = "bookrec"
MODEL_FILE = Path(__file__).parents[1] / "serving" / "pyfunc.py"


class TrackingError(RuntimeError):
    """The tracking server or store cannot be reached or refused a request."""


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlruns' / 'mlflow.db').resolve()}"


def artifact_root(root: Path) -> str | None:
    """Where a new experiment keeps artifacts: a local folder for the SQLite default; the server decides otherwise."""
    if os.environ.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://")):
        return None
    return (root / "mlruns" / "artifacts").resolve().as_uri()


def client(root: Path) -> MlflowClient:
    """An MlflowClient bound to this repository's store. Changes no global state, so any thread may
    call it (the API's and the dashboard's alias pollers do)."""
    from mlflow import MlflowClient

    uri = tracking_uri(root)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    elif uri.startswith(("http://", "https://")):
        check_server(uri)
    try:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    except Exception as err:  # the store cannot be opened (a damaged database, a refused connection)
        raise TrackingError(
            f"cannot open the MLflow store at {uri}: {type(err).__name__}: {str(err)[:300]}"
        ) from err


def use_store(root: Path) -> MlflowClient:
    """`client`, and MLflow's process-wide store set to it for the fluent API (`start_run`,
    `log_model`, `register_model`). For a command's main thread only: MLflow exports the URI to the
    environment, which this puts back as the user had it."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    found = client(root)
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(found.tracking_uri)
    mlflow.set_registry_uri(found.tracking_uri)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return found


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast with a clear message: MLflow's client would retry an unreachable server for minutes."""
    import httpx

    try:
        httpx.get(uri.rstrip("/") + "/health", timeout=timeout).raise_for_status()
    except httpx.HTTPError as err:
        raise TrackingError(
            f"cannot reach the MLflow server at {uri} ({type(err).__name__}: {err})"
        ) from None


def experiment_id(mlflow_client, root: Path, name: str = EXPERIMENT) -> str:
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return mlflow_client.create_experiment(name, artifact_location=artifact_root(root))


def git_commit(root: Path) -> dict[str, str]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"git_commit": commit, "git_dirty": str(dirty).lower()}


def mlflow_name(key: str) -> str:
    """'ndcg@10' -> 'ndcg_at_10': MLflow metric names may not contain '@'."""
    return key.replace("@", "_at_")


@dataclass(frozen=True)
class LoggedRun:
    run_id: str
    model_uri: str
    run_name: str


def flat_params(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections as dotted keys (`neighbourhood.b`), so that the MLflow UI can compare them."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat |= flat_params(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _code_copy(target: Path) -> Path:
    """The `pipeline` package as it is now, without bytecode caches: what a version carries."""
    package = MODEL_FILE.parents[1]
    destination = target / package.name
    shutil.copytree(package, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination


def log_training_run(
    root: Path,
    run_name: str,
    params: dict[str, Any],
    tags: dict[str, str],
    history: list[dict[str, float]],
    metrics: dict[str, dict[str, float]],
    model_name: str,
    bundle_dir: Path,
    artifacts: list[Path],
    pip_requirements: list[str],
) -> LoggedRun:
    """One MLflow run: params, lineage tags, per-epoch curves, final test metrics of the model and the
    baselines, plots, and the model itself as a models-from-code pyfunc (nothing pickled)."""
    import mlflow

    from pipeline.serving.contract import bundle_artifacts, model_signature

    mlflow_client = use_store(root)
    try:
        experiment = experiment_id(mlflow_client, root)
    except Exception as err:
        raise TrackingError(f"MLflow store {tracking_uri(root)} cannot be used: {err}") from err
    with mlflow.start_run(experiment_id=experiment, run_name=run_name) as run:
        mlflow.log_params({key: str(value)[:500] for key, value in flat_params(params).items()})
        mlflow.set_tags(tags)
        for row in history:
            step = int(row["epoch"])
            mlflow.log_metrics({key: float(value) for key, value in row.items() if key != "epoch"}, step=step)
        for model, values in metrics.items():
            kind = "ablation" if model.startswith(f"{model_name}_") else "baseline"  # ncf_without_...
            prefix = "" if model == model_name else f"{kind}.{model}."
            mlflow.log_metrics({prefix + mlflow_name(key): float(value) for key, value in values.items()})
        for path in artifacts:
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=path.name)
            elif path.is_file():
                mlflow.log_artifact(str(path))
        signature, example = model_signature()
        with tempfile.TemporaryDirectory(prefix="bookrec-code-") as scratch:
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(MODEL_FILE),
                code_paths=[str(_code_copy(Path(scratch)))],  # the version carries its own code
                artifacts=bundle_artifacts(bundle_dir),
                pip_requirements=pip_requirements,
                signature=signature,
                input_example=example,
            )
    return LoggedRun(run_id=run.info.run_id, model_uri=info.model_uri, run_name=run_name)
