"""A registry that cannot be read is an error, never "nothing registered": a real MLflow SQLite store
whose database is damaged after the client opened it (as a tracking server whose backend store fails)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.ops import registry, tracking
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def healthy_database(tmp_path_factory) -> Path:
    """An empty MLflow store (creating its tables takes seconds: once for the module)."""
    root = tmp_path_factory.mktemp("store")
    database = root / "mlflow.db"
    tracking.client(root)  # the default store, below root/mlruns
    shutil.move(root / "mlruns" / "mlflow.db", database)
    return database


@pytest.fixture
def damaged_store(tmp_path, monkeypatch, healthy_database):
    """A client opened on a healthy store, and then the store's database overwritten."""
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")  # a project root for the CLI
    database = tmp_path / "mlruns" / "mlflow.db"
    database.parent.mkdir()
    shutil.copy(healthy_database, database)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    client = tracking.client(tmp_path)
    assert registry.list_versions(client) == []  # healthy and empty: nothing registered
    with open(database, "r+b") as handle:
        handle.write(b"not a database any more " * 200)
    return tmp_path, client


def test_listing_versions_or_history_of_an_unreadable_registry_raises(damaged_store):
    _, client = damaged_store
    with pytest.raises(
        registry.RegistryError, match="registry at sqlite:.* (did not answer|cannot be reached)"
    ):
        registry.list_versions(client)
    with pytest.raises(registry.RegistryError, match="registry at sqlite:"):
        registry.serving_history(client)


@pytest.mark.parametrize("command", [["registry", "list"], ["registry", "history"]])
def test_the_cli_says_the_registry_cannot_be_read(damaged_store, monkeypatch, command):
    root, _ = damaged_store
    monkeypatch.chdir(root)
    monkeypatch.delenv("BOOKREC_ROOT", raising=False)
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 1, result.output
    assert re.match(r"error: (cannot open the MLflow store|the registry at) sqlite:", result.output)
    assert "no versions registered yet" not in result.output and "never been set" not in result.output
