"""Fixtures shared by every test layer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import Params, load_params
from tests.synthetic import SyntheticBX, write_synthetic_bx

REPO_ROOT = Path(__file__).resolve().parents[1]
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
    from pipeline.rawdata import fetch

    root = copy_project(tmp_path_factory.mktemp("real") / "project")
    ws, params = Workspace.load(root)
    fetch(ws.raw, ws.cache, source=shared_bx, show_progress=False)
    stages.ingest(ws, params)
    stages.preprocess(ws, params)
    stages.features(ws, params)
    return ws
