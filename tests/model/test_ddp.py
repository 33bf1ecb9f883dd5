"""Data-parallel training for real: two processes under torchrun (gloo on loopback) on planted data,
against the same run in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from pipeline.model import distributed
from tests.conftest import REPO_ROOT
from tests.model import ddp_training


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT)}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*command, "-m", "tests.model.ddp_training", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [
        (json.loads((out / f"rank{rank}.json").read_text()), torch.load(out / f"rank{rank}.pt"))
        for rank in (0, 1)
    ]


@pytest.fixture(scope="module")
def one_process():
    model, summary = ddp_training.run()
    return summary, model.state_dict()


def test_both_ranks_trained_in_sync_and_stopped_together(two_processes):
    (first, weights0), (second, weights1) = two_processes
    assert (first["rank"], second["rank"]) == (0, 1) and first["world_size"] == second["world_size"] == 2
    # The ranks trained on disjoint shards with their own negatives and dropout: only averaged
    # gradients leave them with the same weights after every step.
    assert weights0.keys() == weights1.keys()
    for name in weights0:
        assert torch.equal(weights0[name], weights1[name]), name
    # rank 0's validation decided for both: same epochs, same curve, same best epoch, same stop
    local_clock = "seconds"
    assert [{**row, local_clock: 0} for row in first["epochs"]] == [
        {**row, local_clock: 0} for row in second["epochs"]
    ]
    assert (
        first["best_epoch"] == second["best_epoch"] and first["stopped_because"] == second["stopped_because"]
    )
    assert first["stopped_because"].startswith("no validation improvement")


def test_two_processes_learn_as_one_does(two_processes, one_process):
    (parallel, _), _ = two_processes
    single, _ = one_process
    assert single["world_size"] == 1
    # the same global batches, so the same learning dynamics: the loss curves agree epoch by epoch
    # (the negatives and dropout masks differ, so not exactly)
    for a, b in zip(single["epochs"][:6], parallel["epochs"][:6], strict=True):
        assert abs(a["loss"] - b["loss"]) < 0.02, (a, b)
    assert single["epochs"][5]["loss"] < 0.75 * single["epochs"][0]["loss"]
    assert abs(parallel["best_validation_ndcg"] - single["best_validation_ndcg"]) < 0.02
    # and the planted structure is learned: every reader's top two are unread books of their shelf,
    # ordered well enough within it (a shelf-blind ranking scores far below)
    for run in (single, parallel):
        assert run["own_shelf_top2"] == 1.0
        assert run["best_validation_ndcg"] > 0.75


def test_without_torchrun_nothing_distributed_happens(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed.process_group():
        assert not distributed.active() and not torch.distributed.is_initialized()
        assert (distributed.rank(), distributed.world_size(), distributed.local_processes()) == (0, 1, 1)
        assert distributed.from_main([0.5, 2.0]) == [0.5, 2.0]
        batch = torch.arange(7)
        assert torch.equal(distributed.shard(batch), batch)
