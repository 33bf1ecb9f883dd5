"""Experiments as records, in the feedback store's database (table `experiments`, defined beside the
other run-time tables in `impressions`): one row per A/B experiment started with `bookrec experiment
set` (id, start, end, and the plan: versions, salt, share, planned size).
At most one is open (no end) at a time; starting another or switching the experiment off ends it."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pandas as pd
import sqlalchemy as sa

from pipeline.online import ExperimentPlan
from pipeline.storage.feedback import FeedbackStore
from pipeline.storage.impressions import experiments


def _utc(value) -> datetime:
    """A stored time as an aware UTC datetime (SQLite hands them back naive)."""
    stamp = pd.Timestamp(value)
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")).to_pydatetime()


def _plan(row) -> ExperimentPlan:
    data = json.loads(row.plan)
    ended = None if row.ended_at is None else _utc(row.ended_at)
    return ExperimentPlan(**{**data, "started_at": _utc(data["started_at"]), "ended_at": ended})


def start(store: FeedbackStore, plan: ExperimentPlan) -> ExperimentPlan:
    """Record `plan` as the open experiment, ending any other that was open."""
    with store.engine.begin() as connection:
        connection.execute(
            experiments.update().where(experiments.c.ended_at.is_(None)).values(ended_at=plan.started_at)
        )
        body = plan.as_dict() | {"started_at": plan.started_at.isoformat(), "ended_at": None}
        connection.execute(
            experiments.insert().values(
                id=plan.id, started_at=plan.started_at, ended_at=None, plan=json.dumps(body)
            )
        )
    return plan


def end(store: FeedbackStore, when: datetime | None = None) -> ExperimentPlan | None:
    """End the open experiment (if any); the plan as ended."""
    current = open_experiment(store)
    if current is None:
        return None
    when = when or datetime.now(UTC)
    with store.engine.begin() as connection:
        connection.execute(experiments.update().where(experiments.c.id == current.id).values(ended_at=when))
    return replace(current, ended_at=when)


def open_experiment(store: FeedbackStore) -> ExperimentPlan | None:
    query = sa.select(experiments).where(experiments.c.ended_at.is_(None)).order_by(experiments.c.started_at)
    with store.engine.connect() as connection:
        rows = connection.execute(query).all()
    return _plan(rows[-1]) if rows else None


def latest(store: FeedbackStore) -> ExperimentPlan | None:
    """The open experiment, else the one that ended last."""
    query = sa.select(experiments).order_by(experiments.c.started_at.desc()).limit(1)
    with store.engine.connect() as connection:
        row = connection.execute(query).first()
    return None if row is None else _plan(row)


def find(store: FeedbackStore, experiment_id: str) -> ExperimentPlan:
    with store.engine.connect() as connection:
        row = connection.execute(sa.select(experiments).where(experiments.c.id == experiment_id)).first()
    if row is None:
        raise ValueError(f"no experiment {experiment_id!r} in the store (see `bookrec experiment list`)")
    return _plan(row)


def all_experiments(store: FeedbackStore) -> list[ExperimentPlan]:
    with store.engine.connect() as connection:
        rows = connection.execute(sa.select(experiments).order_by(experiments.c.started_at)).all()
    return [_plan(row) for row in rows]
