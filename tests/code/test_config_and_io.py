"""params.yaml loading and the all-or-nothing writers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline import io
from pipeline.config import ConfigError, Workspace, load_params
from tests.conftest import REPO_ROOT


def test_repository_params_parse_and_are_frozen():
    params = load_params(REPO_ROOT)
    assert params.preprocess.seed == 42
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises its own frozen-instance error
        params.preprocess.seed = 1  # type: ignore[misc]


def _write_params(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    mutate(raw)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda raw: raw["preprocess"].update(seeed=1), "preprocess.seeed: Extra inputs are not permitted"),
        (lambda raw: raw["preprocess"].update(test_fraction="lots"), "preprocess.test_fraction"),
        (lambda raw: raw["ingest"].update(min_age=120), "min_age must not exceed max_age"),
        (lambda raw: raw.pop("features"), "features: Field required"),
        (
            lambda raw: raw["evaluate"]["rp3beta"].update(beta=[]),
            "evaluate.rp3beta.beta: Tuple should have at least 1",
        ),
        (
            lambda raw: raw["evaluate"]["ease"].update(l2=[50, 50]),
            "evaluate.ease: Value error, l2: a grid lists each",
        ),
        (
            lambda raw: raw["evaluate"]["itemknn_bm25_tuned"].update(b=[0.3, 1.5]),
            "evaluate.itemknn_bm25_tuned.b.1",
        ),
    ],
)
def test_bad_params_are_named(tmp_path, mutate, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_params(_write_params(tmp_path, mutate))


def test_overrides_apply_to_one_load_only(tmp_path):
    root = _write_params(tmp_path, lambda raw: None)
    assert load_params(root, {"preprocess.seed": 7}).preprocess.seed == 7
    assert load_params(root).preprocess.seed == 42
    with pytest.raises(ConfigError, match="names no existing key"):
        load_params(root, {"preprocess.sed": 7})


def test_workspace_paths_are_under_the_root(tmp_path):
    root = _write_params(tmp_path, lambda raw: None)
    ws, params = Workspace.load(root)
    assert ws.processed == root / params.paths.processed


def test_atomic_directory_keeps_old_contents_when_the_block_fails(tmp_path):
    target = tmp_path / "out"
    with io.atomic_directory(target) as staging:
        io.write_json({"v": 1}, staging / "a.json")
    with pytest.raises(RuntimeError), io.atomic_directory(target) as staging:
        io.write_json({"v": 2}, staging / "a.json")
        raise RuntimeError("validation failed")
    assert io.read_json(target / "a.json") == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left behind


def test_atomic_path_leaves_no_partial_file(tmp_path):
    target = tmp_path / "t.parquet"
    with pytest.raises(ValueError), io.atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise ValueError
    assert list(tmp_path.iterdir()) == []
    io.write_parquet(pd.DataFrame({"a": [1]}), target)
    assert io.read_parquet(target)["a"].tolist() == [1]


def test_a_bare_off_experiment_mode_reads_as_off(tmp_path):
    """YAML 1.1 reads `mode: off` as false (DVC's `exp run -S` writes it back without quotes)."""
    import shutil

    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    text = (tmp_path / "params.yaml").read_text().replace('mode: "off"', "mode: off")
    (tmp_path / "params.yaml").write_text(text)
    assert yaml.safe_load(text)["serve"]["experiment"]["mode"] is False
    assert load_params(tmp_path).serve.experiment.mode == "off"
