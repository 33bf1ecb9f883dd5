"""The model being served, shared by the API and the dashboard: which registry version serves, and
the truth about it.

`ModelHolder` loads the version the `production` alias points at and polls the alias; a new version
is loaded beside the old one and swapped in with one reference assignment, so requests never wait
and never fail during a swap. A version that cannot be loaded is recorded as the failure, the
version already loaded keeps serving, and `status()` says `degraded` until the alias points at a
version that loads.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline.config import StandingParams
from pipeline.serving.service import BookRecommender

log = logging.getLogger("bookrec.serving")


@dataclass(frozen=True)
class Served:
    version: str
    recommender: BookRecommender


@dataclass(frozen=True)
class LoadFailure:
    version: str
    error: str
    at: str


@dataclass(frozen=True)
class ServingStatus:
    # "ok", "degraded" (serving, but not what the alias names, or the alias unreadable) or "no model"
    status: str
    serving_version: str | None
    production_version: str | None  # what the alias pointed at when last read
    error: str | None = None


class ModelHolder:
    """The model being served; `refresh` swaps in the alias's version atomically when it loads."""

    def __init__(
        self,
        loader: Callable[[str], BookRecommender],
        version_lookup: Callable[[], str | None],
        poll_seconds: float,
        after_swap: Callable[[Served], None] = lambda served: None,
    ):
        self._load = loader
        self._after_swap = after_swap
        # what every loaded version goes through before it serves (the catalog's growth follows here)
        self.prepare: Callable[[BookRecommender], BookRecommender] = lambda recommender: recommender
        self._lookup = version_lookup
        self.poll_seconds = poll_seconds
        self.current: Served | None = None
        self.failure: LoadFailure | None = None
        self.unreachable: str | None = None  # why the alias could not be read at the last refresh
        self.production_version: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one refresh at a time (the poller and a first request)

    def refresh(self) -> bool:
        """Load the production version if it differs from the one served; True if it swapped."""
        with self._lock:
            try:
                version = self._lookup()
            except Exception as err:  # the registry cannot be read: keep serving, and say so
                self.unreachable = f"the registry cannot be read: {type(err).__name__}: {err}"[:1000]
                raise
            self.unreachable = None
            self.production_version = version
            if version is None or (self.current is not None and self.current.version == version):
                self.failure = None
                return False
            try:
                loaded = Served(version, self.prepare(self._load(version)))
            except Exception as err:
                if self.failure is None or self.failure.version != version:
                    log.exception(
                        "could not load bookrec-ncf version %s; still serving %s", version, self.serving
                    )
                stamp = datetime.now(UTC).isoformat(timespec="seconds")
                self.failure = LoadFailure(version, f"{type(err).__name__}: {err}"[:1000], stamp)
                return False
            # The model's tables are long-lived: keep them out of the garbage collector's scans, whose
            # pauses would otherwise show up in the latency tail.
            gc.collect()
            gc.freeze()
            self.current = loaded  # one reference assignment: requests see the old or the new model, whole
            self.failure = None
            log.info("serving bookrec-ncf version %s", version)
        self._after_swap(loaded)
        return True

    def replace(self, version: str, recommender: BookRecommender) -> bool:
        """Serve `recommender` for `version` if that version still serves (the same version over a grown
        catalog): one reference assignment, as a swap; True if it did."""
        with self._lock:
            if self.current is None or self.current.version != version:
                return False
            if self.current.recommender is recommender:
                return False
            self.current = Served(version, recommender)
            loaded = self.current
        self._after_swap(loaded)
        return True

    def clear(self) -> None:
        """Stop holding a model (a challenger no experiment uses any more)."""
        with self._lock:
            self.current, self.failure = None, None

    @property
    def serving(self) -> str | None:
        return None if self.current is None else self.current.version

    def status(self) -> ServingStatus:
        if self.current is None:
            return ServingStatus(
                "no model",
                None,
                self.production_version,
                self.unreachable or (self.failure and self.failure.error),
            )
        if self.unreachable is not None:  # what serves may no longer be what the alias names
            return ServingStatus("degraded", self.current.version, self.production_version, self.unreachable)
        if self.failure is not None:
            return ServingStatus(
                "degraded",
                self.current.version,
                self.failure.version,
                f"version {self.failure.version} could not be loaded: {self.failure.error}",
            )
        return ServingStatus("ok", self.current.version, self.production_version)

    def start(self) -> None:
        def poll():
            # Nothing served yet (the first training run is still on its way): look every second.
            while not self._stop.wait(
                self.poll_seconds if self.current is not None else min(self.poll_seconds, 1.0)
            ):
                try:
                    self.refresh()
                except Exception:  # the registry is down: keep serving the current model
                    log.exception("could not read the production alias")

        self._thread = threading.Thread(target=poll, name="model-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def _alias_holder(
    root: Path, lookup: Callable[[], str | None], poll_seconds: float, standing: StandingParams | None
) -> ModelHolder:
    from pipeline.ops import registry
    from pipeline.serving.codelock import install

    install()  # before the first load starts on the poller's thread: every later import takes the lock

    def ready(version: str) -> BookRecommender:
        # the indexes are built on the poller's thread, before the version serves a request
        recommender = registry.load_recommender(root, version)
        return recommender.build_indexes() if hasattr(recommender, "build_indexes") else recommender

    if standing is None:
        return ModelHolder(ready, lookup, poll_seconds)
    warmup = StandingWarmup(standing)
    return ModelHolder(
        lambda version: warmup.prepare(ready(version)),
        lookup,
        poll_seconds,
        warmup.after_swap,
    )


def registry_holder(root: Path, poll_seconds: float, standing: StandingParams | None = None) -> ModelHolder:
    """A holder of the registry's `production` model (the one way the API and the dashboard load it),
    with standing lists when `standing` says so (the API)."""
    from pipeline.ops import history, registry, tracking

    seen: list[str | None] = [None]

    def lookup() -> str | None:
        client = tracking.client(root)
        found = registry.production_version(client)
        version = None if found is None else str(found.version)
        if version != seen[0]:  # the alias moved: make sure the serving history knows, whoever moved it
            history.reconcile(client, registry.MODEL_NAME, version)
            seen[0] = version
        return version

    return _alias_holder(root, lookup, poll_seconds, standing)


def challenger_holder(root: Path, poll_seconds: float, standing: StandingParams | None = None) -> ModelHolder:
    """A holder of the registry's `challenger` (A/B and shadow serving), loaded the same way."""
    from pipeline.ops import registry, tracking

    def lookup() -> str | None:
        found = registry.challenger_version(tracking.client(root))
        return None if found is None else str(found.version)

    return _alias_holder(root, lookup, poll_seconds, standing)


class StandingWarmup:
    """Standing lists (`pipeline.serving.standing`) for every version a holder loads: turned on before
    the version serves, precomputed for the most active readers in a background thread once it does
    (requests meanwhile rank in full, and keep the lists they rank)."""

    def __init__(self, params: StandingParams):
        self.params = params

    def prepare(self, recommender: BookRecommender) -> BookRecommender:
        if hasattr(recommender, "keep_standing_lists"):  # versions registered before them rank in full
            recommender.keep_standing_lists(self.params.depth, self.params.capacity)
        return recommender

    def after_swap(self, served: Served) -> None:
        if getattr(served.recommender, "standing", None) is None or self.params.warm_readers == 0:
            return
        threading.Thread(target=self._warm, args=(served,), name="standing-lists", daemon=True).start()

    def _warm(self, served: Served) -> None:
        started = time.perf_counter()
        try:
            count = served.recommender.precompute_standing_lists(self.params.warm_readers)
        except Exception:  # the lists fill as requests come: serving is unaffected
            log.exception("could not precompute the standing lists of version %s", served.version)
            return
        seconds = time.perf_counter() - started
        log.info(
            "standing lists of %d readers ranked for version %s in %.1f s", count, served.version, seconds
        )
