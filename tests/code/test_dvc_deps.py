"""dvc.yaml can never leave a stage stale: every `pipeline` module a stage's code imports, directly or
through other modules, is covered by one of that stage's deps (a file or a folder above it).

The imports are read from the code (ast), not listed by hand: a stage's code is its function in
`pipeline/stages.py` plus the module-level imports of stages.py and the stages.py functions it calls;
from there every import of every reached module counts, wherever in the module it stands.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "pipeline"
STAGES = ("ingest", "preprocess", "features", "train", "baselines", "evaluate")


def module_path(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "pipeline":
        return None
    base = REPO_ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(node: ast.AST) -> set[str]:
    """Absolute `pipeline...` modules named by the imports under `node` (`from a import b` may name a
    module b or a name in a; both are tried)."""
    found: set[str] = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Import):
            found |= {alias.name for alias in child.names}
        elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
            found.add(child.module)
            found |= {f"{child.module}.{alias.name}" for alias in child.names}
    return {name for name in found if module_path(name) is not None}


def closure(modules: set[str]) -> set[Path]:
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        path = module_path(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        # a module's package __init__ runs first
        for parent in path.relative_to(REPO_ROOT).parents:
            if (REPO_ROOT / parent / "__init__.py").is_file():
                seen.add(REPO_ROOT / parent / "__init__.py")
        todo.extend(imported_modules(ast.parse(path.read_text())))
    return seen


def stage_modules(stage: str) -> set[Path]:
    tree = ast.parse((PACKAGE / "stages.py").read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    top_level = {
        name for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom) for name in imported_modules(n)
    }
    reached, todo = set(), [stage]
    while todo:  # the stage function and the stages.py functions it calls
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        todo += [
            c.func.id
            for c in ast.walk(functions[name])
            if isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id in functions
        ]
    direct = set(top_level)
    for name in reached:
        direct |= imported_modules(functions[name])
    return closure(direct) | {PACKAGE / "stages.py", PACKAGE / "__init__.py"}


def stage_deps(stage: str) -> list[Path]:
    dvc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    return [REPO_ROOT / dep for dep in dvc["stages"][stage]["deps"] if dep.startswith("pipeline")]


def uncovered(stage: str) -> list[str]:
    deps = stage_deps(stage)
    return sorted(
        str(path.relative_to(REPO_ROOT))
        for path in stage_modules(stage)
        if not any(path == dep or dep in path.parents for dep in deps)
    )


@pytest.mark.parametrize("stage", STAGES)
def test_every_module_a_stage_imports_is_a_dependency_of_that_stage(stage):
    assert uncovered(stage) == [], f"dvc.yaml stage {stage!r} does not depend on these modules it imports"


def test_the_check_sees_modules_reached_only_through_other_modules():
    # train reaches the metrics only through the evaluation code that chooses its best epoch: the
    # derivation must follow imports across modules, or it would prove nothing.
    train = {str(p.relative_to(REPO_ROOT)) for p in stage_modules("train")}
    assert "pipeline/evaluation/metrics.py" in train
    assert "pipeline/model/ncf.py" in train
    assert "pipeline/model/ncf.py" not in {str(p.relative_to(REPO_ROOT)) for p in stage_modules("ingest")}
