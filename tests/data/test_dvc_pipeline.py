"""The DVC pipeline from a clean checkout: fetch, `dvc repro`, nothing to do the second time."""

from __future__ import annotations

import pytest

from pipeline.io import read_json
from tests.conftest import run

pytestmark = pytest.mark.slow


def test_repro_from_clean_checkout_then_nothing_to_do(project, synthetic_bx):
    run(["bookrec", "data", "fetch", "--source", str(synthetic_bx.folder), "--allow-modified"], project)
    assert (project / "data.dvc").is_file()
    first = run(["dvc", "repro", "features"], project)
    assert "Running stage 'ingest'" in first.stdout and "Running stage 'features'" in first.stdout
    counts = read_json(project / "data" / "processed" / "protocol_report.json")
    assert counts["users"] == synthetic_bx.n_users
    second = run(["dvc", "repro", "features"], project)
    assert "Running stage" not in second.stdout
    status = run(["dvc", "status", "features"], project)
    assert "up to date" in status.stdout
    # push to the default local remote and pull back into an empty cache
    run(["dvc", "push"], project)
    run(["rm", "-rf", ".dvc/cache", "data/processed"], project)
    run(["dvc", "pull", "preprocess"], project)
    assert (project / "data" / "processed" / "train.parquet").is_file()


def test_a_failing_stage_leaves_previous_outputs_untouched(project, synthetic_bx):
    run(["bookrec", "data", "fetch", "--source", str(synthetic_bx.folder), "--allow-modified"], project)
    run(["bookrec", "ingest"], project)
    before = (project / "data" / "interim" / "ratings.parquet").read_bytes()
    ratings = project / "data" / "raw" / "book-crossing" / "BX-Book-Ratings.csv"
    ratings.write_bytes(ratings.read_bytes()[:-40])  # cut mid-line, as an interrupted copy would
    run(
        ["bookrec", "data", "fetch", "--source", str(ratings.parent), "--allow-modified", "--force"],
        project,
        check=False,
    )
    done = run(["bookrec", "ingest"], project, check=False)
    assert done.returncode == 1
    assert "BX-Book-Ratings.csv, line" in done.stderr and "truncated" in done.stderr
    assert (project / "data" / "interim" / "ratings.parquet").read_bytes() == before


def test_editing_a_metric_module_makes_train_and_evaluate_stale(trained_project):
    """train chooses its best epoch with the metrics, evaluate reports them: both must rerun after a
    change there, and the data stages must not."""
    metrics = trained_project / "pipeline" / "evaluation" / "metrics.py"
    original = metrics.read_bytes()
    assert "up to date" in run(["dvc", "status"], trained_project).stdout
    try:
        metrics.write_bytes(original + b"\n# an edit\n")
        status = run(["dvc", "status"], trained_project).stdout
    finally:
        metrics.write_bytes(original)
    stale = {
        line.strip().rstrip(":") for line in status.splitlines() if line and not line.startswith(("\t", " "))
    }
    assert {"train", "evaluate"} <= stale, status
    assert not {"ingest", "preprocess", "features"} & stale, status
    assert "up to date" in run(["dvc", "status"], trained_project).stdout


def test_new_train_values_leave_the_baselines_stage_up_to_date(trained_project):
    """A new NCF (here: another learning rate) reruns train (and then evaluate), never the baselines, whose
    stage depends on the data and their own params only; a baseline's params do rerun it."""
    params_file = trained_project / "params.yaml"
    original = params_file.read_text()

    def stale_after(edit: str, replacement: str) -> set[str]:
        assert edit in original
        try:
            params_file.write_text(original.replace(edit, replacement, 1))
            status = run(["dvc", "status"], trained_project).stdout
        finally:
            params_file.write_text(original)
        return {
            line.strip().rstrip(":")
            for line in status.splitlines()
            if line and not line.startswith(("\t", " "))
        }

    stale = stale_after("  lr: 0.01", "  lr: 0.02")  # evaluate follows once train's model changed
    assert "train" in stale and "baselines" not in stale, stale
    assert "baselines" in stale_after("  random:\n    seed: 0", "  random:\n    seed: 1")
    assert "up to date" in run(["dvc", "status"], trained_project).stdout
