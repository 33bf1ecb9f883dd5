"""What `make setup` installs: the dependencies carry their compiled bytecode, so a process start (every
DVC stage, Airflow task and service) imports them instead of compiling them from source again; where
PYTHONDONTWRITEBYTECODE is set, nothing else would ever write it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.mark.parametrize("package", ["pandas", "torch", "mlflow", "airflow", "dvc"])
def test_installed_packages_are_precompiled(package):
    source = importlib.util.find_spec(package).origin  # found, not imported
    compiled = Path(importlib.util.cache_from_source(source))
    assert compiled.is_file(), (
        f"{package} was installed without bytecode ({compiled} missing): see make setup"
    )
