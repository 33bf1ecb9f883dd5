"""DVC from Python: record raw data, run stages, read the data version out of dvc.lock.

The only module that imports dvc; the CLI and the Airflow tasks go through it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.config import Paths

RAW_DVC_FILE = "data.dvc"


@contextmanager
def _dvc_repo(root: Path):
    from dvc.repo import Repo

    saved = {name: os.environ.get(name) for name in ("PATH", "BOOKREC_ROOT")}
    saved["PATH"] = saved["PATH"] or ""
    old_cwd = os.getcwd()
    # Stage commands are `bookrec ...`: make sure the interpreter's own scripts are found first.
    scripts = str(Path(sys.executable).parent)
    if scripts not in saved["PATH"].split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + saved["PATH"]
    # A stage finds its project from its working directory, which for a DVC experiment is a
    # temporary copy of the repository: a BOOKREC_ROOT pointing at the repository would write there.
    os.environ.pop("BOOKREC_ROOT", None)
    # DVC resolves targets against the working directory: work from the repository root.
    os.chdir(root)
    # Wait for DVC's repository lock instead of failing after 3 s: Airflow runs `train` and `baselines`
    # side by side, and DVC holds the lock for a whole stage.
    repo = Repo(str(root), _wait_for_lock=True)
    try:
        yield repo
    finally:
        repo.close()
        os.chdir(old_cwd)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def is_dvc_repo(root: Path) -> bool:
    return (root / ".dvc").is_dir()


def track_raw_data(root: Path, raw_parent: str = "data/raw") -> bool:
    """Put the raw data folder into the DVC cache and record its hash in data.dvc (created if missing).
    True if the raw data changed (a new data version)."""
    if not is_dvc_repo(root):
        return False
    dvc_file = root / RAW_DVC_FILE
    if not dvc_file.is_file():
        dvc_file.write_text(yaml.safe_dump({"outs": [{"path": raw_parent, "hash": "md5"}]}, sort_keys=False))
    before = dvc_file.read_text()
    with _dvc_repo(root) as repo:
        repo.commit(str(dvc_file), force=True)
    return dvc_file.read_text() != before


def reproduce(root: Path, stage: str | None = None, force: bool = False) -> list[str]:
    """Run `stage` alone (or, without a stage, the whole pipeline) if its inputs changed; the names of
    the stages that ran. An orchestrator runs the stages one by one, in order."""
    with _dvc_repo(root) as repo:
        ran = repo.reproduce(targets=[stage] if stage else None, force=force, single_item=stage is not None)
    return [s.addressing for s in ran]


def is_up_to_date(root: Path, stage: str) -> bool:
    """Whether DVC would skip `stage` (its dependencies and outputs are those dvc.lock records)."""
    if not is_dvc_repo(root):
        return False
    with _dvc_repo(root) as repo:
        return not repo.status(targets=[stage])


EXPERIMENTS_DIR = "run/experiments"
# Untracked in a fresh clone (or just written by `dvc repro`): a temporary workspace needs them to
# find the data the stages before the experiment produced.
_WORKSPACE_STATE = ("dvc.lock", RAW_DVC_FILE)


@dataclass(frozen=True)
class Experiment:
    """A DVC experiment run for one set of overrides: its name, its git revision, and the folder below
    the repository where its model, reports and lock file were checked out."""

    name: str
    rev: str
    folder: str  # relative to the repository root

    def tags(self) -> dict[str, str]:
        return {"dvc_experiment": self.name, "dvc_experiment_rev": self.rev}

    def paths_overrides(self, paths: Paths) -> dict[str, str]:
        """Overrides that point a workspace's model and reports at this experiment's copies."""
        return {
            "paths.model": f"{self.folder}/{paths.model}",
            "paths.reports": f"{self.folder}/{paths.reports}",
        }


def experiment_name(*parts: str) -> str:
    """A DVC experiment name (a git ref component) from free text such as an Airflow run id."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(parts)).strip("-")


def run_experiment(root: Path, stage: str, overrides: dict[str, object], name: str) -> str:
    """Run `stage` with `overrides` as the DVC experiment `name` (`dvc exp run --temp -S ...`), in a
    temporary copy of the workspace: the repository's params.yaml and dvc.lock are never written, the
    experiment's own dvc.lock records what it used, and stages an earlier experiment ran with the same
    inputs are restored from DVC's run cache instead of rerunning. Returns the experiment's revision."""
    from pipeline.config import load_params

    load_params(root, overrides)  # a bad override fails here, naming the key, before anything runs
    settings = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    with _dvc_repo(root) as repo:
        if name in _experiment_names(repo):  # a retried task runs its experiment again
            repo.experiments.remove(exp_names=[name])
        results = repo.experiments.run(
            targets=[stage],
            params=settings,
            tmp_dir=True,
            name=name,
            copy_paths=[p for p in _WORKSPACE_STATE if (root / p).is_file()],
        )
    if not results:
        raise RuntimeError(f"DVC experiment {name!r} for stage {stage!r} produced no result")
    return next(iter(results))


def _experiment_names(repo) -> set[str]:
    return {name for names in repo.experiments.ls(all_commits=True).values() for name, _ in names}


def checkout_experiment(root: Path, name: str, rev: str, paths: Paths) -> Experiment:
    """Copy the experiment's model, reports, params and lock file out of the DVC cache into
    `run/experiments/<name>/` (replacing an earlier copy), for registration."""
    from dvc.api import DVCFileSystem

    experiment = Experiment(name, rev, f"{EXPERIMENTS_DIR}/{name}")
    folder = root / experiment.folder
    shutil.rmtree(folder, ignore_errors=True)
    fs = DVCFileSystem(str(root), rev=rev)
    for directory in (paths.model, paths.reports):
        fs.get(directory, str(folder / directory), recursive=True)
    for file in ("params.yaml", *_WORKSPACE_STATE):
        fs.get_file(file, str(folder / file))
    return experiment


def data_version(root: Path) -> dict[str, str]:
    """The DVC hashes of every stage's data dependencies and outputs, from dvc.lock and data.dvc."""
    version: dict[str, str] = {}
    raw_file = root / RAW_DVC_FILE
    if raw_file.is_file():
        for out in yaml.safe_load(raw_file.read_text()).get("outs", []):
            version[out["path"]] = out.get("md5", "")
    lock_file = root / "dvc.lock"
    if lock_file.is_file():
        for stage in (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {}).values():
            for entry in [*stage.get("deps", []), *stage.get("outs", [])]:
                if not entry["path"].endswith(".py"):  # code is versioned by the git commit
                    version[entry["path"]] = entry.get("md5", "")
    return version
