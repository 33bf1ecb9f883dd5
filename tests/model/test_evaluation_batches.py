"""`evaluate.batch_size` means the same for every model: the evaluate stage scores NCF in batches of
that many readers, as the baselines stage scores the baselines (it used to be 256 for NCF whatever
the setting)."""

from __future__ import annotations

import shutil

from pipeline import stages
from pipeline.config import Workspace
from pipeline.model.recommender import NCFRecommender


def test_the_evaluate_stage_scores_ncf_in_batches_of_evaluate_batch_size(
    trained_project, tmp_path, monkeypatch
):
    ws, params = Workspace.load(trained_project)
    reports = tmp_path / "reports"  # the session's project is shared: write this run's reports aside
    reports.mkdir()
    shutil.copy(ws.reports / stages.BASELINES_REPORT, reports / stages.BASELINES_REPORT)
    ws = Workspace(ws.root, ws.paths.model_copy(update={"reports": str(reports)}))
    settings = params.evaluate.model_copy(update={"batch_size": 7, "processes": 1})
    params = params.model_copy(update={"evaluate": settings})
    batches: list[int] = []
    scored = NCFRecommender.candidate_scores

    def recording(self, users, extra):
        batches.append(len(users))
        return scored(self, users, extra)

    monkeypatch.setattr(NCFRecommender, "candidate_scores", recording)
    stages.evaluate(ws, params)
    readers = len(stages.evaluation_data(ws, params, "test").users_with_truth())
    assert readers > 7 and max(batches) == 7
