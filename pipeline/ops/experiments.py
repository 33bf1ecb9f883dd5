"""Starting and ending A/B experiments (`bookrec experiment set`, the simulator): the plan, with
its size planned from production's recent traffic, the run-time setting every service follows, and
the record that an experiment's evidence is read against (`pipeline.online.experiment_lists`)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from pipeline.config import ExperimentParams, Params
from pipeline.online import EXPERIMENT_SURFACE, ExperimentPlan, attribute, per_impression, per_reader
from pipeline.statistics import planned_readers, reader_spread
from pipeline.storage import experiments
from pipeline.storage import impressions as impressions_store
from pipeline.storage.feedback import FeedbackStore

MIN_PILOT_READERS = 100  # production readers in the look-back below which a baseline must be given


def pilot(
    store: FeedbackStore, production_version: str, window: timedelta, min_explicit_rating: int, days: float
) -> tuple[float, float, int]:
    """(click-through, its spread per reader, readers) of production's recommendation lists in the
    last `days`: what the planned size of the next experiment is computed from."""
    since = datetime.now(UTC) - timedelta(days=days)
    shown, books = impressions_store.served_lists(store, since)
    shown = shown[
        shown["shown"].astype(bool)
        & (shown["surface"] == EXPERIMENT_SURFACE)
        & (shown["arm"] == "production")
        & (shown["model_version"].astype(str) == str(production_version))
    ]
    clicks = attribute(shown, books, store.frame(since), window, min_explicit_rating)
    readers = per_reader(per_impression(shown, clicks), ("clicked",)).astype(float)
    if readers.empty:
        return math.nan, math.nan, 0
    return reader_spread(readers["clicked"].to_numpy(), readers["lists"].to_numpy())


def plan(
    store: FeedbackStore,
    params: Params,
    production_version: str,
    challenger_version: str,
    share: float,
    salt: str | None = None,
    baseline: float | None = None,
    pilot_days: float = 30,
) -> ExperimentPlan:
    """An A/B experiment of `challenger_version` against `production_version` starting now. Its size
    comes from production's click-through and spread per reader over the last `pilot_days`, or, with
    `baseline` (no traffic yet), from that click-through with one list per reader."""
    kind = "an A/A test" if str(production_version) == str(challenger_version) else "an A/B test"
    if baseline is None:
        window = timedelta(hours=params.serve.attribution_hours)
        rate, spread, readers = pilot(
            store, production_version, window, params.preprocess.min_explicit_rating, pilot_days
        )
        if readers < MIN_PILOT_READERS or not rate > 0:
            raise ValueError(
                f"production v{production_version} served {readers} readers on the recommendations surface "
                f"in the last {pilot_days:g} days (click-through {rate:.4f}): too little to plan {kind} "
                f"from; give the expected click-through with --baseline-ctr"
            )
    else:
        if not 0 < baseline < 1:
            raise ValueError(f"--baseline-ctr must be in (0, 1), not {baseline}")
        rate, spread = baseline, math.sqrt(baseline * (1 - baseline))
    settings = params.serve.experiment
    challenger_readers, production_readers = planned_readers(
        rate, spread, settings.mde, settings.power, params.gate.confidence, share
    )
    started = datetime.now(UTC)
    identifier = started.strftime("exp-%Y%m%d-%H%M%S")
    return ExperimentPlan(
        identifier,
        started,
        salt or identifier,
        share,
        str(production_version),
        str(challenger_version),
        challenger_readers,
        production_readers,
        float(rate),
        float(spread),
    )


def start(store: FeedbackStore, params: Params, experiment: ExperimentPlan) -> ExperimentPlan:
    """Record `experiment` (ending the one before) and switch every service to it."""
    setting = ExperimentParams(
        **(
            params.serve.experiment.model_dump()
            | {"mode": "ab", "challenger_share": experiment.challenger_share}
        )
        | {"salt": experiment.salt}
    )
    experiments.start(store, experiment)
    impressions_store.write_setting(
        store,
        impressions_store.EXPERIMENT_KEY,
        setting.model_dump(include={"mode", "challenger_share", "salt"}),
    )
    return experiment


def switch(store: FeedbackStore, setting: ExperimentParams | None) -> ExperimentPlan | None:
    """Serve without an A/B experiment (`setting` off or shadow, or None: params.yaml's): the open
    experiment ends now; the plan as ended, if one was open."""
    if setting is not None and setting.mode == "ab":
        raise ValueError("an A/B experiment starts with a plan (`bookrec experiment set ab`)")
    ended = experiments.end(store)
    value = None if setting is None else setting.model_dump(include={"mode", "challenger_share", "salt"})
    impressions_store.write_setting(store, impressions_store.EXPERIMENT_KEY, value)
    return ended
