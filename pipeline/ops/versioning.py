"""DVC from Python: record raw data, run stages, read the data version out of dvc.lock.

The only module that imports dvc; the CLI and the Airflow tasks go through it.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import yaml

RAW_DVC_FILE = "data.dvc"


@contextmanager
def _dvc_repo(root: Path):
    from dvc.repo import Repo

    # Stage commands are `bookrec ...`: make sure the interpreter's own scripts are found first.
    scripts = str(Path(sys.executable).parent)
    old_path, old_cwd = os.environ.get("PATH", ""), os.getcwd()
    if scripts not in old_path.split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + old_path
    # DVC resolves targets against the working directory: work from the repository root.
    os.chdir(root)
    repo = Repo(str(root))
    try:
        yield repo
    finally:
        repo.close()
        os.chdir(old_cwd)
        os.environ["PATH"] = old_path


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


PARAMS_BACKUP = ".params.yaml.before-override"


def restore_params(root: Path) -> bool:
    """Put back params.yaml if a run with overrides was interrupted; True if there was something to restore."""
    backup = root / PARAMS_BACKUP
    if backup.is_file():
        os.replace(backup, root / "params.yaml")
        return True
    return False


@contextmanager
def params_overridden(root: Path, overrides: dict[str, object]):
    """params.yaml with `overrides` (dotted keys) applied for the duration of the block, then restored
    byte for byte. Comments and layout survive (ruamel round trip); a crash leaves a backup that
    `restore_params` puts back at the start of the next task."""
    if not overrides:
        yield
        return
    from ruamel.yaml import YAML

    from pipeline.config import load_params

    load_params(root, overrides)  # validate the overrides before touching anything
    restore_params(root)
    path = root / "params.yaml"
    original = path.read_bytes()
    (root / PARAMS_BACKUP).write_bytes(original)
    handler = YAML()
    document = handler.load(original)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = document
        for key in parents:
            node = node[key]
        node[leaf] = value
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handler.dump(document, handle)
        yield
    finally:
        restore_params(root)


def reproduce(
    root: Path, stage: str | None = None, force: bool = False, overrides: dict[str, object] | None = None
) -> list[str]:
    """Run `stage` alone (or, without a stage, the whole pipeline) if its inputs changed; the names of
    the stages that ran. An orchestrator runs the stages one by one, in order.

    With `overrides`, the run uses them instead of params.yaml's values; dvc.lock then records what
    was used, so the next run without overrides sees the change and reruns the stage.
    """
    with params_overridden(root, overrides or {}), _dvc_repo(root) as repo:
        ran = repo.reproduce(targets=[stage] if stage else None, force=force, single_item=stage is not None)
    return [s.addressing for s in ran]


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
