"""Cached access to the registry, the production model and the feedback store. No model code here:
everything goes through `pipeline`.

The production model loads in a background thread at the first visit (importing torch and MLflow
and reading the model take several seconds): pages show their forms at once and fill in by
themselves when the model is there. Nothing heavy is imported at module level for that reason."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

if TYPE_CHECKING:
    from pipeline.serving.experiment import OnlineLoop
    from pipeline.serving.holder import ModelHolder, ServingStatus
    from pipeline.serving.service import BookRecommender
    from pipeline.storage.feedback import FeedbackStore


def root() -> Path:
    """The repository (or deployment) whose registry and feedback store the dashboard serves."""
    return Path(os.environ.get("BOOKREC_ROOT") or Path(__file__).resolve().parents[1])


def _store() -> str:
    """Cache key of everything read from the registry: which store, not just which function."""
    from pipeline.ops import tracking

    return tracking.tracking_uri(root())


@dataclass(frozen=True)
class Production:
    version: str
    run_id: str
    tags: dict
    created: str


class NoModel(RuntimeError):
    """Nothing to serve: no production model, or the registry cannot be reached."""


class Loading(NoModel):
    """The production model is still loading (in the background, since `seconds`)."""

    def __init__(self, seconds: float):
        super().__init__(f"Loading the production model ({seconds:.0f} s) ...")
        self.seconds = seconds


@st.cache_data(show_spinner=False)
def version_info(store: str, version: str) -> Production:
    """What the sidebar shows of one registry version (immutable once registered, so cached for good)."""
    from pipeline.ops import registry, tracking

    found = tracking.client(root()).get_model_version(registry.MODEL_NAME, version)
    created = pd.Timestamp(found.creation_timestamp, unit="ms").strftime("%Y-%m-%d %H:%M")
    return Production(str(found.version), found.run_id, dict(found.tags), created)


@dataclass
class _Startup:
    """The background load of the production model: one per registry and process."""

    started: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    holder: ModelHolder | None = None
    growth: object | None = None
    error: Exception | None = None
    finished: float = 0.0

    def run(self) -> None:
        try:
            from pipeline.serving.holder import registry_holder

            # loads the version the `production` alias names, polls the alias every 15 s, and keeps
            # serving the last version that loaded when a new one cannot be (the API does the same)
            holder = registry_holder(root(), poll_seconds=15)
            holder.refresh()  # raises when the registry cannot be reached
            holder.start()
            try:
                self.growth = follow_added_books(holder)
            except Exception:  # the store or params cannot be read: serve the trained catalog
                logging.getLogger("bookrec.dashboard").exception("added books cannot be followed")
            self.holder = holder
        except Exception as err:
            self.error = err
        finally:
            self.finished = time.monotonic()
            self.done.set()


def follow_added_books(holder: ModelHolder):
    """Serve the books added to the catalog since training, as the API does: reread every
    serve.rules_refresh_seconds (a page shows them at its next rerun)."""
    from pipeline.config import load_params
    from pipeline.serving.catalog_growth import CatalogGrowth
    from pipeline.storage.feedback import FeedbackStore, feedback_url

    serve = load_params(root()).serve
    growth = CatalogGrowth(
        FeedbackStore(feedback_url(root())), serve.rules_refresh_seconds, serve.fold_in_seconds
    )
    growth.follow(holder)
    growth.refresh()
    growth.start()
    return growth


FIRST_RENDER_SECONDS = 1.0  # cold start, idle: sidebar and form after 3.9-4.0 s without it, 2.8-2.9 s with it


@st.cache_resource(show_spinner=False)
def _startup(store: str) -> _Startup:
    startup = _Startup()
    # Started a moment later: the first page is drawn before the import of torch and MLflow competes
    # with it for the interpreter.
    timer = threading.Timer(FIRST_RENDER_SECONDS, startup.run)
    timer.daemon = True
    timer.start()
    return startup


RETRY_SECONDS = 10  # a load that failed (registry unreachable) is tried again after this long


def _holder(store: str) -> ModelHolder:
    startup = _startup(store)
    if startup.error is not None and time.monotonic() - startup.finished > RETRY_SECONDS:
        _startup.clear()
        startup = _startup(store)
    if not startup.done.is_set():
        raise Loading(time.monotonic() - startup.started)
    if startup.error is not None:
        raise startup.error
    return startup.holder


def serving_status() -> ServingStatus:
    return _holder(_store()).status()


def current() -> tuple[Production, BookRecommender]:
    try:
        holder = _holder(_store())
    except Loading:
        raise
    except Exception as err:
        raise NoModel(f"The model registry cannot be reached ({_store()}): {err}") from err
    if holder.current is None:
        state = holder.status()
        if state.error:
            raise NoModel(f"Production version {state.production_version} could not be loaded: {state.error}")
        raise NoModel(
            "There is no production model yet. Run the training pipeline (`make up` runs it once, "
            "or trigger `bookrec_training` in Airflow) and reload this page."
        )
    return version_info(_store(), holder.current.version), holder.current.recommender


@st.fragment(run_every=1.0)
def rerun_when_loaded() -> None:
    """While the model loads: check every second, and rerun the whole page once it is there."""
    if _startup(_store()).done.is_set():
        st.rerun(scope="app")


def loading_notice(err: Loading) -> None:
    st.info(f"{err} This page fills in by itself as soon as it is ready.", icon=":material/hourglass_top:")
    rerun_when_loaded()


@st.cache_resource
def _feedback_store(url: str) -> FeedbackStore:
    from pipeline.storage.feedback import FeedbackStore

    return FeedbackStore(url)


def feedback_store() -> FeedbackStore:
    from pipeline.storage.feedback import feedback_url

    return _feedback_store(feedback_url(root()))


@st.cache_resource
def _online(url: str) -> OnlineLoop:
    """The dashboard's share of the online loop: its lists are logged as impressions and obey the
    run-time rules (unavailable books) like the API's. It always serves production."""
    from pipeline.config import load_params
    from pipeline.serving.experiment import OnlineLoop

    loop = OnlineLoop.create(_feedback_store(url), load_params(root()).serve)
    loop.rules.refresh()
    loop.rules.start()
    return loop


def online() -> OnlineLoop:
    from pipeline.storage.feedback import feedback_url

    return _online(feedback_url(root()))


def log_list(model: BookRecommender, user_id: str, surface: str, isbns) -> str:
    """Log a list the dashboard shows; its request id, for the feedback it leads to."""
    from pipeline.serving.holder import Served

    served = Served(current()[0].version, model)
    return online().log(
        served, user_id, "production", True, surface, model.item_indices(list(isbns), strict=False)
    )


@st.cache_data(ttl=30, show_spinner=False)
def _online_report(url: str, version: str, days: float):
    from pipeline.config import load_params
    from pipeline.serving.monitoring import online_report

    _, model = current()
    confidence = load_params(root()).gate.confidence
    return online_report(
        _feedback_store(url), model, online().window, days=days, surface=None, confidence=confidence
    )


def online_report(days: float = 30):
    from pipeline.storage.feedback import feedback_url

    return _online_report(feedback_url(root()), current()[0].version, days)


@st.cache_data(ttl=15, show_spinner=False)
def _versions(store: str) -> pd.DataFrame:
    from pipeline.ops import registry, tracking

    return pd.DataFrame(registry.list_versions(tracking.client(root())))


def versions() -> pd.DataFrame:
    return _versions(_store())


@st.cache_data(ttl=15, show_spinner=False)
def _serving_history(store: str) -> pd.DataFrame:
    from pipeline.ops import registry, tracking

    return pd.DataFrame(registry.serving_history(tracking.client(root())))


def serving_history() -> pd.DataFrame:
    return _serving_history(_store())


def model_or_stop() -> tuple[Production, BookRecommender]:
    """The production model, or a clear message in the page and nothing else rendered."""
    found = model_if_ready()
    if found is None:
        st.stop()
    return found


def model_if_ready() -> tuple[Production, BookRecommender] | None:
    """The production model; None while it loads (with a notice, and the page reruns when it is
    there), or a clear message and nothing else rendered when there is none."""
    try:
        return current()
    except Loading as err:
        loading_notice(err)
        return None
    except NoModel as err:
        st.info(str(err)) if "no production model" in str(err) else st.error(str(err))
        st.stop()
