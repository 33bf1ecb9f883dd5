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
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import timedelta

from pipeline.config import ExperimentParams, ServeParams
from pipeline.serving.holder import ModelHolder, Served
from pipeline.storage import impressions as impressions_store
from pipeline.storage.feedback import FeedbackStore
from pipeline.storage.impressions import Impression, ImpressionLog

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
        self.stale: str | None = None  # why the last refresh failed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> RulesSnapshot:
        try:
            override = impressions_store.read_setting(self.store, impressions_store.EXPERIMENT_KEY)
            # The stored setting holds mode, share and salt; planning values stay params.yaml's.
            experiment = (
                self.default
                if override is None
                else ExperimentParams(**(self.default.model_dump() | override))
            )
            snapshot = RulesSnapshot(experiment, frozenset(impressions_store.unavailable(self.store)))
        except Exception as err:  # the last rules stay in force, and /health says they are stale
            self.stale = f"{type(err).__name__}: {err}"[:500]
            raise
        self.current, self.stale = snapshot, None
        self.after_refresh(self.current)
        return self.current

    @property
    def stale_rules(self) -> tuple[str, ...]:
        """The rules in force that could not be reread at the last refresh (none when it succeeded)."""
        return () if self.stale is None else tuple(f.name for f in fields(RulesSnapshot))

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


@dataclass
class OnlineLoop:
    """What a service (the API, the dashboard) needs to learn from its lists: the challenger, the
    run-time rules (experiment, unavailable books), the impression log, the attribution window."""

    challenger: ModelHolder | None
    rules: RuntimeRules
    impressions: ImpressionLog
    window: timedelta

    @classmethod
    def create(
        cls,
        feedback: FeedbackStore,
        serve: ServeParams,
        challenger: ModelHolder | None = None,
        on_written: Callable[[list[Impression]], None] = lambda batch: None,
        on_drop: Callable[[], None] = lambda: None,
        log_impressions: bool = True,
        on_capped: Callable[[], None] = lambda: None,
    ) -> OnlineLoop:
        """The loop of one service: impressions written to `feedback`'s database, rules reread every
        `serve.rules_refresh_seconds`, the challenger loaded only while an experiment uses it."""

        def follow_experiment(snapshot: RulesSnapshot) -> None:
            if challenger is None:
                return
            if snapshot.experiment.mode == "off":
                challenger.clear()
            else:
                challenger.refresh()

        def write(batch: list[Impression]) -> None:
            impressions_store.write_impressions(feedback, batch)
            on_written(batch)

        return cls(
            challenger,
            RuntimeRules(feedback, serve.experiment, serve.rules_refresh_seconds, follow_experiment),
            ImpressionLog(
                write,
                serve.impression_queue,
                on_drop=on_drop,
                enabled=log_impressions,
                per_reader_per_minute=serve.limits.impressions_per_reader,
                on_capped=on_capped,
            ),
            timedelta(hours=serve.attribution_hours),
        )

    def arm_for(self, user_id: str) -> tuple[Served | None, str]:
        """The challenger and its arm for a reader in the challenger's A/B arm, else (None, production)."""
        challenger = None if self.challenger is None else self.challenger.current
        if challenger is not None and arm_of(user_id, self.rules.current.experiment) == "challenger":
            return challenger, "challenger"
        return None, "production"

    @property
    def blocked(self) -> tuple[str, ...]:
        """ISBNs no list may hold right now (marked unavailable)."""
        return tuple(self.rules.current.unavailable)

    def shadow(self, holder: ModelHolder) -> Served | None:
        """The challenger, when it scores every request in shadow mode (and is not production)."""
        if self.rules.current.experiment.mode != "shadow" or self.challenger is None:
            return None
        shadow = self.challenger.current
        production = holder.current
        return (
            shadow
            if shadow is not None and (production is None or shadow.version != production.version)
            else None
        )

    def log(
        self, model: Served, user_id: str, arm: str, shown: bool, surface: str, ids, client: str | None = None
    ) -> str:
        """Queue the impression of one list (item indices of `model`); its new request id. Lists without
        a reader ("<similar>", "<new reader>") count against their `client`'s impression cap."""
        request_id = uuid.uuid4().hex
        isbns = tuple(model.recommender.isbns[int(i)] for i in ids if i >= 0)
        reader = f"{user_id}@{client}" if user_id.startswith("<") else user_id
        self.impressions.log(
            Impression(request_id, user_id, model.version, arm, shown, surface, isbns), reader
        )
        return request_id
