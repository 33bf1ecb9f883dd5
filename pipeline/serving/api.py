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

import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.config import IngestParams, ServeParams, load_params
from pipeline.serving.access import bearer_guard, client_of, excluded_isbns, overloaded
from pipeline.serving.batching import Overloaded, RankBatcher
from pipeline.serving.catalog_growth import CatalogGrowth
from pipeline.serving.experiment import OnlineLoop
from pipeline.serving.holder import ModelHolder, Served, challenger_holder, registry_holder
from pipeline.serving.instruments import ClientRateLimit, GuardAndMeasure, Instruments
from pipeline.serving.schemas import (
    HISTORY,
    ISBN,
    MAX_PER_AUTHOR,
    USER_ID,
    AddedBook,
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


def _health(holder: ModelHolder, online: OnlineLoop) -> Health:
    """The serving truth: `degraded` when the alias names a version that is not serving, when the
    registry cannot be read, or when run-time rules in force could not be reread (`stale_rules`)."""
    state = holder.status()
    stale = online.rules.stale_rules
    status = "degraded" if stale and state.status == "ok" else state.status
    errors = [state.error] if state.error else []
    if stale:
        errors.append(
            f"run-time rules could not be reread, the last ones stay in force: {online.rules.stale}"
        )
    return Health(
        status=status,
        model_version=state.serving_version,
        production_version=state.production_version,
        error="; ".join(errors) or None,
        stale_rules=list(stale),
    )


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
        state = _health(holder, online)
        if state.model_version is None:
            response.status_code = 503
        return state

    @router.get("/metrics", response_class=Response)
    def prometheus_metrics() -> Response:
        state = _health(holder, online)
        instruments.serving.clear()
        if state.model_version is not None:
            instruments.serving.labels(state.model_version).set(1)
        instruments.degraded.set(0 if state.status == "ok" else 1)
        standing = None if holder.current is None else getattr(holder.current.recommender, "standing", None)
        instruments.standing.set(0 if standing is None else len(standing))
        try:
            refresh_online_gauges()
        except Exception:  # the store is down: the other metrics still answer
            log.exception("could not compute the online metrics")
        return Response(generate_latest(instruments.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def _read_routes(
    holder: ModelHolder,
    feedback: FeedbackStore,
    batcher: RankBatcher,
    online: OnlineLoop,
    read_tokens: tuple[str, ...] | None = None,
) -> APIRouter:
    """The reads; behind a bearer token (`read_tokens`) when `serve.read_token` says so."""
    router = APIRouter(dependencies=[Depends(bearer_guard(*read_tokens))] if read_tokens else [])

    @router.get("/recommendations/{user_id}", response_model=Recommendations)
    async def recommend(
        request: Request,
        background: BackgroundTasks,
        user_id: str = USER_ID,
        k: int = K,
        max_per_author: int | None = MAX_PER_AUTHOR,
        exclude: tuple[str, ...] = Depends(excluded_isbns),
        history: str = HISTORY,
    ) -> dict:
        """Top-k books for a reader; a reader the model has never seen gets the cold-start answer.
        Never a book the reader knows, an `exclude`d book or one marked unavailable."""
        challenger, arm = online.arm_for(user_id)
        model = challenger or _serving(holder)
        blocked = (*exclude, *online.blocked)
        # The reader's live feedback is read on the batcher's thread, one query for the whole batch
        # (the store is a synchronous database: never queried on the loop).
        scoring = {"feedback": feedback, "blocked": blocked, "exclude": history}
        ids, scores = await batcher.rank(
            model.recommender, user_id, k, rules=_rules(model, max_per_author), **scoring
        )
        request_id = online.log(model, user_id, arm, True, "recommendations", ids, client_of(request))
        if (shadow := online.shadow(holder)) is not None:  # scored after the answer is sent
            background.add_task(_shadow_list, batcher, online, shadow, user_id, k, max_per_author, scoring)
        return {
            "request_id": request_id,
            "arm": arm,
            "user_id": user_id,
            "known_reader": model.recommender.known_user(user_id) is not None,
            "model_version": model.version,
            "books": model.recommender.book_records(ids, scores),
        }

    @router.post("/recommendations", response_model=Recommendations)
    async def recommend_new_reader(reader: NewReader, request: Request) -> dict:
        """Top-k books for someone new, from age, location and a few liked books (no retraining)."""
        model = _serving(holder)
        new = Reader(age=reader.age, location=reader.location, liked_isbns=tuple(reader.liked_isbns))
        blocked = online.blocked
        ids, scores = await batcher.rank(
            model.recommender, "<new reader>", reader.k, reader=new, blocked=blocked
        )
        return {
            "request_id": online.log(
                model, "<new reader>", "production", True, "new_reader", ids, client_of(request)
            ),
            "arm": "production",
            "known_reader": False,
            "model_version": model.version,
            "books": model.recommender.book_records(ids, scores),
        }

    @router.get("/books/{isbn}/similar", response_model=SimilarBooks)
    async def similar(
        request: Request,
        isbn: str = ISBN,
        k: int = K,
        max_per_author: int | None = MAX_PER_AUTHOR,
        exclude: tuple[str, ...] = Depends(excluded_isbns),
    ) -> dict:
        """The books most similar to one book: never another edition of it, one edition per work."""
        model = _serving(holder)
        query = _book_index(model, isbn)
        blocked = (*exclude, *online.blocked)
        # An exact search over the whole catalog: on a worker thread, never on the event loop.
        ids, scores = await run_in_threadpool(
            model.recommender.rank_similar, query, k, _rules(model, max_per_author), blocked
        )
        return {
            "request_id": online.log(
                model, "<similar>", "production", True, "similar", ids[0], client_of(request)
            ),
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
    read_token: str | None = None,
    rate_limit: bool = True,
    ingest: IngestParams | None = None,
) -> FastAPI:
    """The app: operations (health, metrics), reads (recommendations, similar books, the experiment;
    bearer `read_token` or `write_token` required when `serve.read_token`) and writes (live feedback,
    admin; bearer `write_token` required) over the model `holder` serves, with the `challenger` for A/B
    and shadow serving. `serve.limits` bound what a client may ask (unless `rate_limit` is False)."""
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
        on_capped=instruments.impressions_capped.inc,
    )
    batcher = RankBatcher(
        observe_batch_size=instruments.batch_sizes.observe, max_pending=serve.limits.pending_requests
    )
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
    limit = ClientRateLimit(serve.limits.requests_per_client) if rate_limit else None
    app.add_middleware(
        GuardAndMeasure, requests=instruments.requests, latency=instruments.latency, limit=limit
    )
    if serve.read_token and read_token is None:
        raise ValueError("serve.read_token is true: the API needs a read token")
    read_tokens = (read_token, write_token) if serve.read_token else None
    for router in (
        _ops_routes(holder, feedback, online, instruments),
        _read_routes(holder, feedback, batcher, online, read_tokens),
        _write_routes(holder, feedback, online, growth, write_token, ingest or load_params().ingest),
    ):
        app.include_router(router)
    app.add_exception_handler(Overloaded, overloaded)
    return app


def build_app(
    root: Path, poll_seconds: float = 10.0, log_impressions: bool = True, rate_limit: bool = True
) -> FastAPI:
    from pipeline.storage.secrets import api_read_token, api_token

    params = load_params(root)
    serve = params.serve
    return create_app(
        registry_holder(root, poll_seconds, serve.standing),
        FeedbackStore.for_root(root),
        api_token(root),
        challenger=challenger_holder(root, poll_seconds, serve.standing),
        serve=serve,
        log_impressions=log_impressions,
        read_token=api_read_token(root) if serve.read_token else None,
        rate_limit=rate_limit,
        ingest=params.ingest,
    )
