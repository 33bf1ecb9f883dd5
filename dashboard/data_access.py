"""Cached access to the registry, the production model and the feedback store. No model code here:
everything goes through `pipeline`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from pipeline.ops import registry, tracking
from pipeline.serving.service import BookRecommender
from pipeline.storage.feedback import FeedbackStore


def root() -> Path:
    """The repository (or deployment) whose registry and feedback store the dashboard serves."""
    return Path(os.environ.get("BOOKREC_ROOT") or Path(__file__).resolve().parents[1])


def _store() -> str:
    """Cache key of everything read from the registry: which store, not just which function."""
    return tracking.tracking_uri(root())


@dataclass(frozen=True)
class Production:
    version: str
    run_id: str
    tags: dict
    created: str


class NoModel(RuntimeError):
    """Nothing to serve: no production model, or the registry cannot be reached."""


@st.cache_data(ttl=15, show_spinner=False)
def production_info(store: str) -> Production | None:
    """The version the `production` alias points at; re-read every 15 s so that a move is noticed."""
    client = tracking.client(root())
    version = registry.production_version(client)
    if version is None:
        return None
    created = pd.Timestamp(version.creation_timestamp, unit="ms").strftime("%Y-%m-%d %H:%M")
    return Production(str(version.version), version.run_id, dict(version.tags), created)


@st.cache_resource(max_entries=2, show_spinner="Loading the production model ...")
def recommender_for(store: str, version: str) -> BookRecommender:
    """Loaded once per version (the cache key), straight from the registry."""
    return registry.load_recommender(root(), version)


def current() -> tuple[Production, BookRecommender]:
    try:
        info = production_info(_store())
    except Exception as err:
        raise NoModel(f"The model registry cannot be reached ({_store()}): {err}") from err
    if info is None:
        raise NoModel(
            "There is no production model yet. Run the training pipeline (`make up` runs it once, "
            "or trigger `bookrec_training` in Airflow) and reload this page."
        )
    return info, recommender_for(_store(), info.version)


@st.cache_resource
def _feedback_store(url: str) -> FeedbackStore:
    return FeedbackStore(url)


def feedback_store() -> FeedbackStore:
    from pipeline.storage.feedback import feedback_url

    return _feedback_store(feedback_url(root()))


@st.cache_data(ttl=15, show_spinner=False)
def _versions(store: str) -> pd.DataFrame:
    return pd.DataFrame(registry.list_versions(tracking.client(root())))


def versions() -> pd.DataFrame:
    return _versions(_store())


def model_or_stop() -> tuple[Production, BookRecommender]:
    """The production model, or a clear message in the page and nothing else rendered."""
    try:
        return current()
    except NoModel as err:
        st.info(str(err)) if "no production model" in str(err) else st.error(str(err))
        st.stop()
