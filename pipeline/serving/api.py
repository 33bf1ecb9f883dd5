"""The real-time REST API (FastAPI): recommendations, similar books, new readers and live feedback.

The service loads the registry's `production` model at start and polls the alias; when it moves, the
new version is loaded beside the old one and swapped in with one reference assignment, so requests
never wait and never fail during a swap. A posted interaction is committed to the feedback store
before the response, and the reader's next recommendations fold it in.

The scoring endpoints are `async`: a request is a few milliseconds of CPU, and running them on the
event loop (instead of a thread pool fighting over the GIL) doubled throughput on 2 cores. Requests
that queue up under concurrency are scored together (`batching.RankBatcher`): one pass over the item
matrix for the whole batch.
"""

from __future__ import annotations

import hmac
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, HTTPException, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.config import IngestParams, ServeParams, load_params
from pipeline.serving.batching import RankBatcher
from pipeline.serving.catalog_growth import CatalogGrowth
from pipeline.serving.experiment import OnlineLoop
from pipeline.serving.holder import ModelHolder, Served, challenger_holder, registry_holder
from pipeline.serving.instruments import GuardAndMeasure, Instruments
from pipeline.serving.schemas import (
    EXCLUDE,
    HISTORY,
    ISBN,
    MAX_PER_AUTHOR,
    USER_ID,
    AddedBook,
    BearerCredentials,
    ExperimentIn,
    ExperimentOut,
    Health,
    InteractionIn,
    InteractionOut,
    K,
    NewBook,
    NewReader,
    Recommendations,
    SimilarBooks,
    Unavailable,
)
from pipeline.serving.service import Reader
from pipeline.storage import impressions as impressions_store
from pipeline.storage.feedback import FeedbackStore

log = logging.getLogger("bookrec.api")


def _lifespan(
    holder: ModelHolder, batcher: RankBatcher, online: OnlineLoop, growth: CatalogGrowth, start_polling: bool
):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import torch

        torch.set_num_threads(1)  # one request, one core: concurrent requests use the others
        try:
            holder.refresh()
        except Exception:
            log.exception("no model could be loaded at start; /health will say so")
        try:
            online.rules.refresh()
        except Exception:
            log.exception("could not read the run-time rules at start; using params.yaml's")
        try:
            growth.refresh()
        except Exception:
            log.exception("could not read the added books at start; serving the trained catalog")
        if start_polling:
            holder.start()
            online.rules.start()
            growth.start()
        yield
        batcher.stop()
        holder.stop()
        online.rules.stop()
        growth.stop()
        online.impressions.close()

    return lifespan


def _serving(holder: ModelHolder) -> Served:
    current = holder.current
    if current is None:
        raise HTTPException(503, "no production model is available yet; train and register one")
    return current


def _rules(model: Served, max_per_author: int | None):
    """The model's list rules, with the request's author cap when it gave one (0: no cap)."""
    return model.recommender.rules_for("default" if max_per_author is None else max_per_author)


def _book_index(model: Served, isbn: str):
    try:
        return model.recommender.item_indices([isbn])
    except KeyError as err:
        # A version runs the code it was registered with (pyfunc.own_code), so its UnknownBookError
        # is that code's class, not this module's: catch the builtin base it shares with every version.
        raise HTTPException(404, str(err)) from None


ONLINE_GAUGES = ("ctr", "positive_rate", "mrr", "coverage", "long_tail_share", "impressions")


def _ops_routes(
    holder: ModelHolder, feedback: FeedbackStore, online: OnlineLoop, instruments: Instruments
) -> APIRouter:
    router = APIRouter()
    computed = {"at": -1e9}

    def refresh_online_gauges() -> None:
        """Recompute the online metrics for /metrics at most every 30 s (a scrape must stay cheap)."""
        from pipeline.serving.monitoring import online_report

        if time.monotonic() - computed["at"] < 30 or holder.current is None:
            return
        computed["at"] = time.monotonic()
        report = online_report(feedback, holder.current.recommender, online.window, days=7)
        instruments.online.clear()
        for row in report.by_version.to_dict("records"):
            for metric in ONLINE_GAUGES:
                instruments.online.labels(row["model_version"], row["arm"], metric).set(row[metric])

    @router.get("/health", response_model=Health)
    def health(response: Response) -> Health:
        state = holder.status()
        if state.serving_version is None:
            response.status_code = 503
        return Health(
            status=state.status,
            model_version=state.serving_version,
            production_version=state.production_version,
            error=state.error,
        )

    @router.get("/metrics", response_class=Response)
    def prometheus_metrics() -> Response:
        state = holder.status()
        instruments.serving.clear()
        if state.serving_version is not None:
            instruments.serving.labels(state.serving_version).set(1)
        instruments.degraded.set(0 if state.status == "ok" else 1)
        standing = None if holder.current is None else getattr(holder.current.recommender, "standing", None)
        instruments.standing.set(0 if standing is None else len(standing))
        try:
            refresh_online_gauges()
        except Exception:  # the store is down: the other metrics still answer
            log.exception("could not compute the online metrics")
        return Response(generate_latest(instruments.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def _split_isbns(values: list[str]) -> tuple[str, ...]:
    return tuple(part.strip().upper() for value in values for part in value.split(",") if part.strip())


def _read_routes(
    holder: ModelHolder, feedback: FeedbackStore, batcher: RankBatcher, online: OnlineLoop
) -> APIRouter:
    router = APIRouter()

    @router.get("/recommendations/{user_id}", response_model=Recommendations)
    async def recommend(
        background: BackgroundTasks,
        user_id: str = USER_ID,
        k: int = K,
        max_per_author: int | None = MAX_PER_AUTHOR,
        exclude: list[str] = EXCLUDE,
        history: str = HISTORY,
    ) -> dict:
        """Top-k books for a reader; a reader the model has never seen gets the cold-start answer.
        Never a book the reader knows, an `exclude`d book or one marked unavailable."""
        challenger, arm = online.arm_for(user_id)
        model = challenger or _serving(holder)
        blocked = (*_split_isbns(exclude), *online.blocked)
        # The reader's live feedback is read on the batcher's thread, one query for the whole batch
        # (the store is a synchronous database: never queried on the loop).
        request = {"feedback": feedback, "blocked": blocked, "exclude": history}
        ids, scores = await batcher.rank(
            model.recommender, user_id, k, rules=_rules(model, max_per_author), **request
        )
        request_id = online.log(model, user_id, arm, True, "recommendations", ids)
        if (shadow := online.shadow(holder)) is not None:  # scored after the answer is sent
            background.add_task(_shadow_list, batcher, online, shadow, user_id, k, max_per_author, request)
        return {
            "request_id": request_id,
            "arm": arm,
            "user_id": user_id,
            "known_reader": model.recommender.known_user(user_id) is not None,
            "model_version": model.version,
            "books": model.recommender.book_records(ids, scores),
        }

    @router.post("/recommendations", response_model=Recommendations)
    async def recommend_new_reader(reader: NewReader) -> dict:
        """Top-k books for someone new, from age, location and a few liked books (no retraining)."""
        model = _serving(holder)
        new = Reader(age=reader.age, location=reader.location, liked_isbns=tuple(reader.liked_isbns))
        blocked = online.blocked
        ids, scores = await batcher.rank(
            model.recommender, "<new reader>", reader.k, reader=new, blocked=blocked
        )
        return {
            "request_id": online.log(model, "<new reader>", "production", True, "new_reader", ids),
            "arm": "production",
            "known_reader": False,
            "model_version": model.version,
            "books": model.recommender.book_records(ids, scores),
        }

    @router.get("/books/{isbn}/similar", response_model=SimilarBooks)
    async def similar(
        isbn: str = ISBN,
        k: int = K,
        max_per_author: int | None = MAX_PER_AUTHOR,
        exclude: list[str] = EXCLUDE,
    ) -> dict:
        """The books most similar to one book: never another edition of it, one edition per work."""
        model = _serving(holder)
        query = _book_index(model, isbn)
        blocked = (*_split_isbns(exclude), *online.blocked)
        ids, scores = model.recommender.rank_similar(query, k, _rules(model, max_per_author), blocked)
        return {
            "request_id": online.log(model, "<similar>", "production", True, "similar", ids[0]),
            "isbn": isbn.upper(),
            "model_version": model.version,
            "books": model.recommender.book_records(ids[0], scores[0]),
        }

    @router.get("/experiment", response_model=ExperimentOut)
    def experiment() -> ExperimentOut:
        """The experiment in force (params.yaml's `serve.experiment` unless overridden at run time)."""
        current = online.rules.current.experiment
        challenger = online.challenger.serving if online.challenger is not None else None
        source = "params.yaml" if current == online.rules.default else "run time"
        return ExperimentOut(**current.model_dump(), source=source, challenger_version=challenger)

    return router


async def _shadow_list(
    batcher, online: OnlineLoop, shadow: Served, user_id, k, max_per_author, request
) -> None:
    """The challenger's list for a request in shadow mode: logged, never shown."""
    try:
        ids, _ = await batcher.rank(
            shadow.recommender, user_id, k, rules=_rules(shadow, max_per_author), **request
        )
        online.log(shadow, user_id, "challenger", False, "recommendations", ids)
    except Exception:  # a broken challenger must never affect production traffic
        log.exception("shadow scoring with version %s failed", shadow.version)


def bearer_guard(token: str):
    """A dependency that lets a request through only with `Authorization: Bearer <token>`:
    401 without credentials, 403 with a wrong token (compared in constant time)."""

    def guard(credentials: BearerCredentials) -> None:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(
                401, "this endpoint needs Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"}
            )
        if not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(403, "the bearer token is not valid for this API")

    return guard


def _write_routes(
    holder: ModelHolder,
    feedback: FeedbackStore,
    online: OnlineLoop,
    growth: CatalogGrowth,
    token: str,
    ingest: IngestParams,
) -> APIRouter:
    """Writes feed the next training run or change what every reader is shown: only holders of the
    token may make them."""
    router = APIRouter(dependencies=[Depends(bearer_guard(token))])

    @router.post("/users/{user_id}/interactions", response_model=InteractionOut, status_code=201)
    def add_interaction(interaction: InteractionIn, user_id: str = USER_ID) -> InteractionOut:
        """Store that a reader read (rating 0) or rated (1..10) a book; it counts at the next request.
        `request_id` names the list the reader chose it from (online metrics)."""
        _book_index(_serving(holder), interaction.isbn)
        stored = feedback.add(user_id, interaction.isbn, interaction.rating, interaction.request_id)
        return InteractionOut(
            user_id=stored.user_id,
            isbn=stored.isbn,
            rating=stored.rating,
            stored_at=stored.created_at.isoformat(),
        )

    @router.put("/admin/experiment", response_model=ExperimentOut)
    def set_experiment(experiment: ExperimentIn) -> ExperimentOut:
        """Override params.yaml's `serve.experiment` for every service, until cleared."""
        impressions_store.write_setting(feedback, impressions_store.EXPERIMENT_KEY, experiment.model_dump())
        online.rules.refresh()
        return ExperimentOut(**experiment.model_dump(), source="run time")

    @router.delete("/admin/experiment", status_code=204)
    def clear_experiment() -> Response:
        """Back to params.yaml's `serve.experiment`."""
        impressions_store.write_setting(feedback, impressions_store.EXPERIMENT_KEY, None)
        online.rules.refresh()
        return Response(status_code=204)

    @router.put("/admin/books/{isbn}/unavailable", status_code=204)
    def mark_unavailable(body: Unavailable, isbn: str = ISBN) -> Response:
        """Never serve this book (out of print, withdrawn) until marked available again."""
        impressions_store.set_unavailable(feedback, [isbn], body.reason)
        online.rules.refresh()
        return Response(status_code=204)

    @router.put("/admin/books/{isbn}", response_model=AddedBook)
    def add_book(book: NewBook, isbn: str = ISBN) -> AddedBook:
        """Add a book to the catalog (or correct one added before): served by every service within
        `serve.rules_refresh_seconds` (here at once), kept for the next training run."""
        from pipeline.storage.added_books import add_book_fields

        try:
            stored = add_book_fields(feedback, isbn, book.model_dump(), ingest)
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        growth.refresh()
        return AddedBook(**book.model_dump(), isbn=stored)

    @router.delete("/admin/books/{isbn}/unavailable", status_code=204)
    def mark_available(isbn: str = ISBN) -> Response:
        impressions_store.set_available(feedback, [isbn])
        online.rules.refresh()
        return Response(status_code=204)

    return router


def create_app(
    holder: ModelHolder,
    feedback: FeedbackStore,
    write_token: str,
    start_polling: bool = True,
    challenger: ModelHolder | None = None,
    serve: ServeParams | None = None,
    log_impressions: bool = True,
    ingest: IngestParams | None = None,
) -> FastAPI:
    """The app: operations (health, metrics), reads (recommendations, similar books, the experiment)
    and writes (live feedback, admin; bearer `write_token` required) over the model `holder` serves,
    with the `challenger` for A/B and shadow serving."""
    instruments = Instruments.create()
    serve = serve or load_params().serve

    def count(batch) -> None:
        from collections import Counter as Tally

        for (arm, shown), n in Tally((i.arm, str(i.shown).lower()) for i in batch).items():
            instruments.impressions.labels(arm, shown).inc(n)

    online = OnlineLoop.create(
        feedback,
        serve,
        challenger,
        on_written=count,
        on_drop=instruments.impressions_dropped.inc,
        log_impressions=log_impressions,
    )
    batcher = RankBatcher(observe_batch_size=instruments.batch_sizes.observe)
    growth = CatalogGrowth(feedback, serve.rules_refresh_seconds, serve.fold_in_seconds)
    for followed in (holder, challenger):
        if followed is not None:
            growth.follow(followed)
    app = FastAPI(
        title="bookrec API",
        version="1.0",
        lifespan=_lifespan(holder, batcher, online, growth, start_polling),
        description="Real-time book recommendations from the registry's production model.",
    )
    app.add_middleware(GuardAndMeasure, requests=instruments.requests, latency=instruments.latency)
    for router in (
        _ops_routes(holder, feedback, online, instruments),
        _read_routes(holder, feedback, batcher, online),
        _write_routes(holder, feedback, online, growth, write_token, ingest or load_params().ingest),
    ):
        app.include_router(router)
    return app


def build_app(root: Path, poll_seconds: float = 10.0, log_impressions: bool = True) -> FastAPI:
    from pipeline.storage.secrets import api_token

    params = load_params(root)
    serve = params.serve
    return create_app(
        registry_holder(root, poll_seconds, serve.standing),
        FeedbackStore.for_root(root),
        api_token(root),
        challenger=challenger_holder(root, poll_seconds, serve.standing),
        serve=serve,
        log_impressions=log_impressions,
        ingest=params.ingest,
    )
