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
    old_path = os.environ.get("PATH", "")
    if scripts not in old_path.split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + old_path
    repo = Repo(str(root))
    try:
        yield repo
    finally:
        repo.close()
        os.environ["PATH"] = old_path


def is_dvc_repo(root: Path) -> bool:
    return (root / ".dvc").is_dir()


def track_raw_data(root: Path, raw_parent: str = "data/raw") -> None:
    """Put the raw data folder into the DVC cache and record its hash in data.dvc (created if missing)."""
    if not is_dvc_repo(root):
        return
    dvc_file = root / RAW_DVC_FILE
    if not dvc_file.is_file():
        dvc_file.write_text(yaml.safe_dump({"outs": [{"path": raw_parent, "hash": "md5"}]}, sort_keys=False))
    with _dvc_repo(root) as repo:
        repo.commit(RAW_DVC_FILE, force=True)


def reproduce(root: Path, stage: str | None = None, force: bool = False) -> list[str]:
    """Run `stage` (and what it depends on) if its inputs changed; the names of the stages that ran."""
    with _dvc_repo(root) as repo:
        ran = repo.reproduce(targets=[stage] if stage else None, force=force, single_item=False)
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
