"""Fixtures shared by every test layer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.config import Params, load_params
from tests.synthetic import SyntheticBX, write_synthetic_bx

REPO_ROOT = Path(__file__).resolve().parents[1]

# Airflow reads its configuration when first imported: give the test session its own home and
# metadata database before anything imports it.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="bookrec-test-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO_ROOT / "dags")
SHARED_BX = REPO_ROOT.parent / "shared" / "data" / "book-crossing"
BIN = Path(sys.executable).parent
# What a copied project needs to run its pipeline; data, models and run stores are never copied.
PROJECT_FILES = (
    "pipeline",
    "dags",
    "dashboard",
    "dvc.yaml",
    "params.yaml",
    ".dvcignore",
    ".dvc/config",
    ".dvc/.gitignore",
    "pyproject.toml",
)


@pytest.fixture(scope="session")
def repo_params() -> Params:
    return load_params(REPO_ROOT)


@pytest.fixture(scope="session")
def shared_bx() -> Path:
    if not (SHARED_BX / "BX-Book-Ratings.csv").is_file():
        pytest.skip(f"the real Book-Crossing files are not in {SHARED_BX}; this test needs them")
    return SHARED_BX


@pytest.fixture(scope="session")
def synthetic_bx(tmp_path_factory) -> SyntheticBX:
    return write_synthetic_bx(tmp_path_factory.mktemp("synthetic-bx"))


def run(
    command: list[str], cwd: Path, env: dict | None = None, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    full_env.pop("BOOKREC_ROOT", None)
    done = subprocess.run(
        command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done


def copy_project(target: Path) -> Path:
    """A fresh git + DVC checkout of the project's code in `target`, with no data."""
    target.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / ".gitignore").write_text(
        "/data/raw/\n/data/interim/\n/data/processed/\n/data/features/\n/models/\n/reports/\n/mlruns/\n/dvc-storage/\n"
    )
    run(["git", "init", "-q"], target)
    run(["git", "-c", "user.email=t@example.invalid", "-c", "user.name=test", "add", "-A"], target)
    run(
        ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=test", "commit", "-qm", "copy"], target
    )
    return target


@pytest.fixture
def project(tmp_path) -> Path:
    return copy_project(tmp_path / "project")


@pytest.fixture(scope="session")
def real_workspace(tmp_path_factory, shared_bx):
    """The real dump fetched from ../shared (checksums verified) and run through the data stages, once."""
    from pipeline import stages
    from pipeline.config import Workspace
    from pipeline.storage.rawdata import fetch

    root = copy_project(tmp_path_factory.mktemp("real") / "project")
    ws, params = Workspace.load(root)
    fetch(ws.raw, ws.cache, source=shared_bx, show_progress=False)
    stages.ingest(ws, params)
    stages.preprocess(ws, params)
    stages.features(ws, params)
    return ws


# Small, fast settings for pipelines on the synthetic dataset (the real ones are in params.yaml).
SMALL_PARAMS = {
    "train": {
        "epochs": 12,
        "gmf_dim": 16,
        "mlp_dim": 8,
        "mlp_layers": [16],
        "batch_size": 512,
        "lr": 0.01,
        "embedding_lr": 0.01,
        "lr_decay": 1.0,  # the synthetic tests are calibrated for a constant rate
        "max_seconds": 0,
        "patience": 12,
        "threads": 1,
        "early_stopping_users": 0,
    },
    "evaluate": {
        "als": {"factors": 8, "regularization": 1.0, "alpha": 10.0, "iterations": 3, "seed": 42},
        "curve_max_k": 20,
    },
    "gate": {"min_personalization": 0.5, "min_coverage": 0.05, "min_novelty": 0.1},
    # The tests drive the API as a load test does, from one client: the bounds are tested on their own
    # (tests/services/test_api.py).
    "serve": {"limits": {"requests_per_client": "", "impressions_per_reader": 0}},
}


def use_small_params(root: Path, extra: dict | None = None) -> None:
    import yaml

    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in {**SMALL_PARAMS, **(extra or {})}.items():
        for key, value in values.items():
            if isinstance(value, dict):
                params[section][key].update(value)
            else:
                params[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def build_synthetic_project(target: Path, synthetic: SyntheticBX, register: bool = True) -> Path:
    """A project copy with the synthetic data fetched, the whole DVC pipeline run, and (by default) the
    model registered and promoted in the copy's own MLflow store."""
    root = copy_project(target)
    use_small_params(root)
    run(["bookrec", "data", "fetch", "--source", str(synthetic.folder), "--allow-modified"], root)
    run(["dvc", "repro"], root)
    if register:
        run(["bookrec", "register"], root)
    return root


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory, synthetic_bx) -> Path:
    """Session-wide: a trained, registered, promoted model on the synthetic data. Tests must not change it."""
    return build_synthetic_project(tmp_path_factory.mktemp("trained") / "project", synthetic_bx)


def mlflow_env(root: Path) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"}


@pytest.fixture(scope="session")
def real_trained(real_workspace):
    """The real data with a short NCF training run (two epochs of a small model): the real end-to-end path
    at CI speed. The product's own figures come from `dvc repro` with params.yaml (see benchmarks)."""
    from pipeline import stages
    from pipeline.config import load_params

    params = load_params(real_workspace.root)
    short = params.train.model_copy(
        update={
            "epochs": 2,
            "gmf_dim": 32,
            "mlp_dim": 16,
            "mlp_layers": (32,),
            "early_stopping_users": 1000,
            "max_seconds": 0,
            "patience": 2,
        }
    )
    summary = stages.train(real_workspace, params.model_copy(update={"train": short}), show_progress=False)
    return real_workspace, summary


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def register_broken_copy(client, version: str, folder: Path) -> str:
    """A new registry version that is `version` with corrupt weights (as a damaged upload would be):
    its number, for tests that move `production` to it."""
    import mlflow

    from pipeline.ops import registry

    source = client.get_model_version_download_uri(registry.MODEL_NAME, version)
    copy = Path(
        mlflow.artifacts.download_artifacts(source, dst_path=str(folder), tracking_uri=client.tracking_uri)
    )
    (copy / "artifacts" / "weights.safetensors").write_bytes(b"not safetensors")
    return str(client.create_model_version(registry.MODEL_NAME, source=copy.as_uri()).version)
