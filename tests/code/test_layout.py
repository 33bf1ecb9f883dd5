"""The layout is the architecture: the pure core imports no I/O framework, serving imports no
ingestion or evaluation code, and every subpackage says what it holds and what it may import."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

CORE = ("data", "model", "evaluation")
FORBIDDEN_IN_CORE = ("mlflow", "airflow", "streamlit", "sqlalchemy", "safetensors", "fastapi", "dvc")


def imports_of(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", CORE)
def test_core_subpackages_import_no_io_framework(package):
    for path in (REPO_ROOT / "pipeline" / package).glob("*.py"):
        assert not imports_of(path) & set(FORBIDDEN_IN_CORE), path.name
        text = path.read_text()
        assert "open(" not in text and "read_parquet" not in text and "to_parquet" not in text, path.name


@pytest.mark.parametrize("module", ["ranking.py", "online.py", "statistics.py"])
def test_ranking_and_online_metrics_are_pure_too(module):
    assert not imports_of(REPO_ROOT / "pipeline" / module) & set(FORBIDDEN_IN_CORE)


def test_serving_loads_no_ingestion_training_or_evaluation_code():
    probe = (
        "import sys, json; import pipeline.serving.api, pipeline.serving.pyfunc; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    loaded = set(
        json.loads(
            subprocess.run(
                [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO_ROOT
            ).stdout
        )
    )
    for module in (
        "pipeline.data.ingest",
        "pipeline.model.train",
        "pipeline.evaluation",
        "ftfy",
        "pandera",
        "sklearn",
        "implicit",
        "airflow",
        "streamlit",
    ):
        assert module not in loaded, module


@pytest.mark.parametrize("package", [*CORE, "storage", "ops", "serving", "cli"])
def test_every_subpackage_says_what_it_holds_and_may_import(package):
    doc = ast.get_docstring(ast.parse((REPO_ROOT / "pipeline" / package / "__init__.py").read_text()))
    assert doc and "import" in doc.lower()
