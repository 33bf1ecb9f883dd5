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
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from pipeline.serving.batching import RankBatcher
from pipeline.serving.holder import ModelHolder, Served, registry_holder
from pipeline.serving.service import MAX_K, Reader
from pipeline.storage.feedback import FeedbackStore

log = logging.getLogger("bookrec.api")
MAX_BODY_BYTES = 64 * 1024
USER_ID = PathParam(min_length=1, max_length=32, pattern=r"^[\w.-]+$", description="Book-Crossing User-ID")
ISBN = PathParam(min_length=1, max_length=32, pattern=r"^[\w.-]+$", description="ISBN-10 or ISBN-13")
K = Query(10, ge=1, le=MAX_K, description="How many books")
BEARER = HTTPBearer(auto_error=False, description="The API's write token (run/api_token)")
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
MAX_PER_AUTHOR = Query(
    None,
    ge=0,
    le=MAX_K,
    description="At most this many books by one author (0: no cap; default: the model's)",
)


class Book(BaseModel):
    rank: int
    isbn: str
    score: float
    title: str | None = None
    author: str | None = None
    year: int | None = None
    publisher: str | None = None
    cover_url: str | None = None


class Recommendations(BaseModel):
    user_id: str | None = None
    known_reader: bool
    model_version: str
    books: list[Book]


class SimilarBooks(BaseModel):
    isbn: str
    model_version: str
    books: list[Book]


class InteractionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    isbn: str = Field(min_length=1, max_length=32, pattern=r"^[\w.-]+$")
    rating: int = Field(0, ge=0, le=10, description="0 = read without rating, 1..10 explicit rating")


class InteractionOut(BaseModel):
    user_id: str
    isbn: str
    rating: int
    stored_at: str


class NewReader(BaseModel):
    model_config = ConfigDict(extra="forbid")
    age: float | None = Field(None, ge=0, le=130)
    location: str | None = Field(None, max_length=200, description="city, region, country")
    liked_isbns: list[str] = Field(default_factory=list, max_length=50)
    k: int = Field(10, ge=1, le=MAX_K)


class Health(BaseModel):
    status: str = Field(description="ok, degraded (serving, but not the version the alias names) or no model")
    model_version: str | None = Field(description="the version actually serving")
    production_version: str | None = Field(None, description="the version the production alias names")
    error: str | None = None


class GuardAndMeasure:
    """Pure ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware on the hot path): refuses bodies
    over MAX_BODY_BYTES with 413, and counts requests and their latency per route for /metrics."""

    def __init__(self, app, requests: Counter, latency: Histogram):
        self.app, self.requests, self.latency = app, requests, latency

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return await self._too_large(send)
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            body, more = b"", True
            while more:  # a chunked body: read it (up to the limit) before the app sees it
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > MAX_BODY_BYTES:
                    return await self._too_large(send)
            replayed = False

            async def receive():
                nonlocal replayed
                if replayed:
                    return {"type": "http.disconnect"}
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

        status = {"code": 500}

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.latency.labels(endpoint).observe(time.perf_counter() - started)
            self.requests.labels(endpoint, str(status["code"])).inc()

    @staticmethod
    async def _too_large(send) -> None:
        await JSONResponse({"detail": f"request body larger than {MAX_BODY_BYTES} bytes"}, status_code=413)(
            {"type": "http"}, None, send
        )


@dataclass
class Instruments:
    """The Prometheus metrics of one app (its own registry, so that two apps in a process never mix)."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    batch_sizes: Histogram
    serving: Gauge  # 1 for the version actually serving
    degraded: Gauge  # 1 when the alias names a version that is not serving (or nothing serves)

    @classmethod
    def create(cls) -> Instruments:
        registry = CollectorRegistry()
        return cls(
            registry,
            Counter("bookrec_requests", "HTTP requests", ["endpoint", "status"], registry=registry),
            Histogram(
                "bookrec_request_seconds",
                "Request latency",
                ["endpoint"],
                registry=registry,
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            ),
            Histogram(
                "bookrec_rank_batch_size",
                "Recommendation requests scored together",
                registry=registry,
                buckets=(1, 2, 4, 8, 16, 32),
            ),
            Gauge(
                "bookrec_serving_version",
                "The registry version serving requests",
                ["version"],
                registry=registry,
            ),
            Gauge("bookrec_model_degraded", "1 when production could not be loaded", registry=registry),
        )


def _lifespan(holder: ModelHolder, batcher: RankBatcher, start_polling: bool):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import torch

        torch.set_num_threads(1)  # one request, one core: concurrent requests use the others
        try:
            holder.refresh()
        except Exception:
            log.exception("no model could be loaded at start; /health will say so")
        if start_polling:
            holder.start()
        yield
        batcher.stop()
        holder.stop()

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


def _ops_routes(holder: ModelHolder, instruments: Instruments) -> APIRouter:
    router = APIRouter()

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
        return Response(generate_latest(instruments.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def _read_routes(holder: ModelHolder, feedback: FeedbackStore, batcher: RankBatcher) -> APIRouter:
    router = APIRouter()

    @router.get("/recommendations/{user_id}", response_model=Recommendations)
    async def recommend(
        user_id: str = USER_ID, k: int = K, max_per_author: int | None = MAX_PER_AUTHOR
    ) -> dict:
        """Top-k books for a reader; a reader the model has never seen gets the cold-start answer."""
        model = _serving(holder)
        # The feedback store is a synchronous database: query it on a worker thread, never on the loop.
        read, liked = await run_in_threadpool(model.recommender.live_history, feedback, user_id)
        rules = _rules(model, max_per_author)
        ids, scores = await batcher.rank(
            model.recommender, user_id, k, extra_reads=liked, extra_excluded=read, rules=rules
        )
        return {
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
        ids, scores = await batcher.rank(model.recommender, "<new reader>", reader.k, reader=new)
        return {
            "known_reader": False,
            "model_version": model.version,
            "books": model.recommender.book_records(ids, scores),
        }

    @router.get("/books/{isbn}/similar", response_model=SimilarBooks)
    async def similar(isbn: str = ISBN, k: int = K, max_per_author: int | None = MAX_PER_AUTHOR) -> dict:
        """The books most similar to one book: never another edition of it, one edition per work."""
        model = _serving(holder)
        query = _book_index(model, isbn)
        rules = _rules(model, max_per_author)
        ids, scores = model.recommender.rank_similar(query, k, rules)
        return {
            "isbn": isbn.upper(),
            "model_version": model.version,
            "books": model.recommender.book_records(ids[0], scores[0]),
        }

    return router


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


def _write_routes(holder: ModelHolder, feedback: FeedbackStore, token: str) -> APIRouter:
    """Writes feed the next training run: only holders of the token may make them."""
    router = APIRouter(dependencies=[Depends(bearer_guard(token))])

    @router.post("/users/{user_id}/interactions", response_model=InteractionOut, status_code=201)
    def add_interaction(interaction: InteractionIn, user_id: str = USER_ID) -> InteractionOut:
        """Store that a reader read (rating 0) or rated (1..10) a book; it counts at the next request."""
        _book_index(_serving(holder), interaction.isbn)
        stored = feedback.add(user_id, interaction.isbn, interaction.rating)
        return InteractionOut(
            user_id=stored.user_id,
            isbn=stored.isbn,
            rating=stored.rating,
            stored_at=stored.created_at.isoformat(),
        )

    return router


def create_app(
    holder: ModelHolder, feedback: FeedbackStore, write_token: str, start_polling: bool = True
) -> FastAPI:
    """The app: operations (health, metrics), reads (recommendations, similar books) and writes
    (live feedback, bearer `write_token` required) over the model `holder` serves."""
    instruments = Instruments.create()
    batcher = RankBatcher(observe_batch_size=instruments.batch_sizes.observe)
    app = FastAPI(
        title="bookrec API",
        version="1.0",
        lifespan=_lifespan(holder, batcher, start_polling),
        description="Real-time book recommendations from the registry's production model.",
    )
    app.add_middleware(GuardAndMeasure, requests=instruments.requests, latency=instruments.latency)
    for router in (
        _ops_routes(holder, instruments),
        _read_routes(holder, feedback, batcher),
        _write_routes(holder, feedback, write_token),
    ):
        app.include_router(router)
    return app


def build_app(root: Path, poll_seconds: float = 10.0) -> FastAPI:
    from pipeline.storage.secrets import api_token

    return create_app(registry_holder(root, poll_seconds), FeedbackStore.for_root(root), api_token(root))
