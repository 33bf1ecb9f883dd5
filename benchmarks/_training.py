"""The training inputs of a workspace after `dvc repro` (train split, side features), for the
training benchmarks: what `stages.train` trains on, without the validation data it also builds."""

from __future__ import annotations

from pipeline import io
from pipeline.config import Workspace
from pipeline.evaluation.evaluate import interaction_matrix
from pipeline.model.train import TrainingData, training_data


def training_inputs(ws: Workspace) -> TrainingData:
    from pipeline.stages import _feature_tables

    n_users = len(io.read_parquet(ws.processed / "users.parquet", columns=["user_idx"]))
    n_items = len(io.read_parquet(ws.processed / "items.parquet", columns=["item_idx"]))
    train = interaction_matrix(io.read_parquet(ws.processed / "train.parquet"), n_users, n_items)
    vocabulary, user_features, item_features = _feature_tables(ws)
    return training_data(train, user_features, item_features, vocabulary)
