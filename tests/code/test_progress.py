"""The pipeline's progress lines: what the stages report and what `make up`'s terminal shows of it."""

from __future__ import annotations

import json

import pytest

from pipeline.ops import progress


def test_tasks_report_start_end_and_failure_only_when_asked(tmp_path, monkeypatch):
    events = tmp_path / "progress.jsonl"
    with progress.task("ingest"):
        pass
    assert not events.exists()  # no BOOKREC_PROGRESS: nothing is written
    monkeypatch.setenv(progress.ENV, str(events))
    with progress.task("ingest") as shown:
        shown["skipped"] = True
    with pytest.raises(ValueError), progress.task("train"):
        raise ValueError("bad row 3")
    written = [json.loads(line) for line in events.read_text().splitlines()]
    assert [(e["task"], e["state"]) for e in written] == [
        ("ingest", "started"),
        ("ingest", "done"),
        ("train", "started"),
        ("train", "failed"),
    ]
    assert written[1]["skipped"] is True and "bad row 3" in written[3]["error"]


def test_the_view_prints_one_line_per_task_and_follows_the_epochs(tmp_path, monkeypatch):
    events = tmp_path / "progress.jsonl"
    events.write_text("")
    monkeypatch.setenv(progress.ENV, str(events))
    shown: list[str] = []
    with progress.ProgressView(events, shown.append, poll_seconds=0.01) as view:
        progress.report(task="ingest", state="done", seconds=12.34)
        progress.report(task="features", state="done", seconds=0.2, skipped=True)
        for epoch in (1, 2):
            progress.report(task="train", epochs=10, epoch=epoch, loss=0.5, val_ndcg_at_10=0.04)
        progress.report(task="train", state="done", seconds=61.0)
        progress.report(task="register", state="failed", seconds=1.0, error="RuntimeError: no metrics")
    assert view._bar is None
    assert shown == [
        "  ingest               done in 12.3 s",
        "  features             skipped (inputs unchanged, 0.2 s)",
        "  train                done in 61.0 s",
        "  register             FAILED after 1.0 s: RuntimeError: no metrics",
    ]
