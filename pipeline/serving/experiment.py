"""Which model a reader gets, and the platform's run-time rules.

`arm_of` assigns a reader to `production` or `challenger` by a keyed hash of the reader id (BLAKE2b,
keyed by the experiment's salt): the same reader always gets the same arm while the salt is the
same, whatever the order or number of requests, and shares are exact in expectation.

`RuntimeRules` is what an operator can change while the services run, without retraining or a
restart: the experiment (params.yaml `serve.experiment`, overridden by `bookrec experiment set` or
`PUT /admin/experiment`) and the books marked unavailable (`bookrec books unavailable`, `PUT
/admin/books/{isbn}/unavailable`). Every service rereads them from the store every
`serve.rules_refresh_seconds`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.config import ExperimentParams

log = logging.getLogger("bookrec.serving")
ARMS = ("production", "challenger")


def arm_of(user_id: str, experiment: ExperimentParams) -> str:
    """`challenger` for a stable `challenger_share` of readers in ab mode, else `production`."""
    if experiment.mode != "ab" or experiment.challenger_share <= 0:
        return "production"
    digest = hashlib.blake2b(str(user_id).strip().encode(), digest_size=8, key=experiment.salt.encode()[:64])
    position = int.from_bytes(digest.digest(), "big") / 2.0**64
    return "challenger" if position < experiment.challenger_share else "production"


@dataclass(frozen=True)
class RulesSnapshot:
    experiment: ExperimentParams
    unavailable: frozenset[str]


class RuntimeRules:
    """The current run-time rules, reread from the feedback store's database in a background thread."""

    def __init__(
        self,
        store,
        default: ExperimentParams,
        refresh_seconds: float,
        after_refresh: Callable[[RulesSnapshot], None] = lambda snapshot: None,
    ):
        self.store, self.default, self.refresh_seconds = store, default, refresh_seconds
        self.after_refresh = after_refresh
        self.current = RulesSnapshot(default, frozenset())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> RulesSnapshot:
        from pipeline.storage import impressions as store

        override = store.read_setting(self.store, store.EXPERIMENT_KEY)
        experiment = self.default if override is None else ExperimentParams(**override)
        self.current = RulesSnapshot(experiment, frozenset(store.unavailable(self.store)))
        self.after_refresh(self.current)
        return self.current

    def start(self) -> None:
        def poll():
            while not self._stop.wait(self.refresh_seconds):
                try:
                    self.refresh()
                except Exception:  # the database is down: keep the last rules
                    log.exception("could not reread the run-time rules")

        self._thread = threading.Thread(target=poll, name="rules-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
